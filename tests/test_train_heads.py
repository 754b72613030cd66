"""`entmtp heads train` end to end on the default model at toy size."""
import json

import pytest
import torch

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


@pytest.mark.parametrize("kind", ["medusa", "hydra"])
def test_train_resume_and_load(default_model_dir, tmp_path, kind, capsys):
    loaded = load_model(str(default_model_dir), torch.bfloat16)
    cfg = TrainConfig(kind=kind, n_heads=2, sharegpt_prompts=0, code_prompts=3, gen_tokens=12, steps=4,
                      batch_size=8, checkpoint_every=2, held_out=0.34)
    # Stop after 2 steps, then rerun the same config: it must resume, not restart.
    train_heads(loaded, TrainConfig(**{**cfg.__dict__, "steps": 2}), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    meta = train_heads(loaded, cfg, tmp_path)
    assert "resuming from step 2" in capsys.readouterr().out
    prompts = json.loads((tmp_path / "prompts.json").read_text())["prompts"]
    assert len(prompts) == 3 and all(p["source"] == "stdlib" for p in prompts)
    heads = load_heads(tmp_path / "heads", hidden_size=loaded.config.hidden_size,
                       vocab_size=loaded.config.vocab_size)
    assert isinstance(heads, MedusaHeads if kind == "medusa" else HydraHeads) and heads.n_heads == 2
    top1 = meta["training"]["held_out_top1"]
    assert len(top1) == 2 and all(0.0 <= a <= 1.0 for a in top1)


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
    from entmtp.heads.train import _chat_wrapper, _equal_length_batches, _generate_batch

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
