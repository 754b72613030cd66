"""`entmtp run` end to end on the default model, and every bad input it must
turn into one line on stderr with the right exit status."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from entmtp_cli.main import main


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("entmtp: error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def prompt_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.txt"
    path.write_text("Say hello.\n", encoding="utf-8")
    return path


def test_run_json_on_default_model(capsys, default_model_dir, prompt_txt):
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt),
                          "--max-new-tokens", "8", "--json", "--dtype", "fp32")
    assert code == 0, err
    record = json.loads(out.strip())
    for key in ("prompt", "text", "token_ids", "n_tokens", "steps", "seconds", "tokens_per_second", "method"):
        assert key in record
    assert record["method"] == "ar" and record["prompt"] == "Say hello."
    assert 1 <= record["n_tokens"] == len(record["token_ids"]) <= 8
    assert record["text"]


def test_run_streams_text_and_jsonl_gives_one_result_per_line(capsys, default_model_dir, tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Count to three."}\n\n{"prompt": "Name a color."}\n', encoding="utf-8")
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(jsonl),
                          "--max-new-tokens", "4", "--json")
    assert code == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["Count to three.", "Name a color."]
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(jsonl),
                          "--max-new-tokens", "4")
    assert code == 0 and out.strip() and "tok/s" in err


def test_greedy_fp32_run_is_deterministic_and_raw_differs(capsys, default_model_dir, prompt_txt):
    args = ("run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt), "--max-new-tokens", "6",
            "--json", "--dtype", "fp32")
    first = json.loads(_run(capsys, *args)[1])
    second = json.loads(_run(capsys, *args)[1])
    raw = json.loads(_run(capsys, *args, "--raw")[1])
    assert first["token_ids"] == second["token_ids"]
    assert raw["prompt_tokens"] < first["prompt_tokens"]  # no chat template around it


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    """A tiny random llama with the default model's tokenizer and a 24-token context."""
    folder = tmp_path_factory.mktemp("tiny")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, folder / name)
    if (default_model_dir / "chat_template.jinja").exists():
        shutil.copy(default_model_dir / "chat_template.jinja", folder / "chat_template.jinja")
    config = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 24, "tie_word_embeddings": True, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(49152, 16, generator=g), "model.norm.weight": torch.ones(16)}
    p = "model.layers.0."
    t.update({p + "input_layernorm.weight": torch.ones(16), p + "post_attention_layernorm.weight": torch.ones(16),
              p + "self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
              p + "self_attn.k_proj.weight": torch.randn(8, 16, generator=g),
              p + "self_attn.v_proj.weight": torch.randn(8, 16, generator=g),
              p + "self_attn.o_proj.weight": torch.randn(16, 16, generator=g),
              p + "mlp.gate_proj.weight": torch.randn(32, 16, generator=g),
              p + "mlp.up_proj.weight": torch.randn(32, 16, generator=g),
              p + "mlp.down_proj.weight": torch.randn(16, 32, generator=g)})
    save_file(t, str(folder / "model.safetensors"))
    return folder


def _variant(tiny_folder, tmp_path, edit):
    folder = tmp_path / "variant"
    shutil.copytree(tiny_folder, folder)
    edit(folder)
    return folder


def test_tiny_model_runs(capsys, tiny_folder, prompt_txt):
    code, out, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt),
                          "--raw", "--max-new-tokens", "3", "--json")
    assert code == 0, err


def test_default_model_runs_on_its_quantized_weights(capsys, default_model_dir, prompt_txt):
    # fp32 activations: the quantized model's own plain decoding, reproduced by a bank method.
    base = ("run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt), "--max-new-tokens", "12",
            "--json", "--dtype", "q4_1-fp32")
    plain = json.loads(_run(capsys, *base)[1])
    bank = json.loads(_run(capsys, *base, "--method", "entmtp", "--task", "humaneval")[1])
    assert plain["token_ids"] == bank["token_ids"] and len(plain["token_ids"]) == 12
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt),
                          "--max-new-tokens", "4", "--json", "--dtype", "q4_1")
    assert code == 0 and len(json.loads(out)["token_ids"]) == 4, err


def test_tiny_model_off_the_block_size_is_refused(capsys, tiny_folder, prompt_txt):
    # hidden size 16: not whole 32-weight blocks.
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt),
                        "--raw", "--max-new-tokens", "3", "--dtype", "q8_0")
    assert code != 0 and "not a multiple of the 32-weight blocks of q8_0; use --dtype bf16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


BAD_MODELS = {
    "missing folder": (lambda f: shutil.rmtree(f), "not found"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors"),
    "unknown architecture": (lambda f: _edit_config(f, model_type="gpt_neox"), "unsupported architecture"),
    "shape mismatch": (lambda f: _edit_config(f, intermediate_size=48), "has shape"),
    "corrupt safetensors": (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00garbage"), "cannot read safetensors"),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
}


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_folders(capsys, tiny_folder, tmp_path, prompt_txt, case):
    edit, needle = BAD_MODELS[case]
    folder = _variant(tiny_folder, tmp_path, edit)
    code, _, err = _run(capsys, "run", "--model", str(folder), "--prompt-file", str(prompt_txt))
    assert code == 1
    _one_error_line(err, needle)


def test_prompt_longer_than_context(capsys, tiny_folder, tmp_path):
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("word " * 100, encoding="utf-8")
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(long_prompt), "--raw")
    assert code == 1
    _one_error_line(err, "but the model's context is 24")


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"\xff\xfe\x00bad", "is not UTF-8"),
])
def test_bad_prompt_files(capsys, tiny_folder, tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(path))
    assert code == 1
    _one_error_line(err, needle)


def test_bad_jsonl_names_the_line(capsys, tiny_folder, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": 3}\n', encoding="utf-8")
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(path))
    assert code == 1
    _one_error_line(err, "bad.jsonl:2")


@pytest.mark.parametrize("args,needle", [
    (("--max-new-tokens", "0"), "--max-new-tokens must be positive"),
    (("--dtype", "fp8"), "--dtype must be one of"),
    (("--method", "magic"), "unknown method 'magic'"),
    (("--device", "tpu"), "--device must be cpu or cuda"),
    (("--bogus-flag",), "No such option"),
    (("--method", "hydra", "--draft-vocab", "lots"), "--draft-vocab must be off, heads or a number"),
    (("--draft-vocab", "heads"), "--draft-vocab goes with --method medusa, hydra, hydrapp or entmtp"),
    (("--method", "entmtp", "--scheduler", "entropy", "--signal", "accept"), "the entropy scheduler takes no signal"),
    (("--method", "entmtp", "--task", "poetry"), "unknown task 'poetry'"),
    (("--method", "entmtp", "--scheduler", "bogus"), "Invalid value for '--scheduler'"),
])
def test_usage_errors_exit_2(capsys, tiny_folder, prompt_txt, args, needle):
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt), *args)
    assert code == 2
    _one_error_line(err, needle)


def test_missing_prompt_file(capsys, tiny_folder, tmp_path):
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(tmp_path / "nope.txt"))
    assert code == 1
    _one_error_line(err, "does not exist")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(capsys, tiny_folder, prompt_txt):
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt),
                        "--device", "cuda")
    assert code == 1
    _one_error_line(err, "no CUDA GPU is available")


def test_console_script_exit_status(tmp_path):
    """The installed `entmtp` entry point: real process, real exit code, one line."""
    exe = shutil.which("entmtp") or str(__import__("pathlib").Path(sys.executable).with_name("entmtp"))
    proc = subprocess.run([exe, "run", "--prompt-file", str(tmp_path / "missing.txt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "does not exist")


def test_cli_choices_match_the_package():
    # cli/choices.py spells the lists out (importing them would pull torch into --help).
    from entmtp.heads.modules import KINDS
    from entmtp.heads.train import LOSSES, TRAIN_DTYPES
    from entmtp.schedule.spec import RATE_SIGNALS, SCHEDULERS
    from entmtp_cli.choices import HeadKind, Scheduler, Signal, TrainDtype, TrainLoss

    assert {c.value for c in HeadKind} == set(KINDS)
    assert {c.value for c in TrainLoss} == set(LOSSES)
    assert {c.value for c in TrainDtype} == set(TRAIN_DTYPES)
    assert {c.value for c in Scheduler} == set(SCHEDULERS)
    assert {c.value for c in Signal} == set(RATE_SIGNALS)
