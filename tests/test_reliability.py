"""Defects a new user hit (issue 18), each pinned by a test that failed before its fix:
speculative decoding to the last context position, Ctrl-C exit codes and what they
keep, flags that do not apply, prompts from the command line or stdin, duplicate
bench ids, and an interrupted bench resumed to the same records."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import _one_error_line, _run, prompt_txt, tiny_folder  # noqa: F401 (fixtures)

from entmtp import tasks
from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.methods import MethodOptions, make_bank_decoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import UsageError
from entmtp.heads.shipped import load_model_heads
from entmtp.model.loader import load_model
from entmtp.trees.files import load_tree

POEM = "Write a poem about the sea and the moon and the stars, please, in five lines with rhymes."


def _short_context_copy(default_model_dir: Path, root: Path, positions: int) -> Path:
    """The default model with its context cut to `positions`; same folder name, so
    its shipped heads and banks apply."""
    folder = root / f"ctx{positions}" / default_model_dir.name
    folder.mkdir(parents=True)
    for item in default_model_dir.iterdir():
        if item.name != "config.json":
            os.symlink(item, folder / item.name)
    config = json.loads((default_model_dir / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def short_models(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("short")
    return {n: load_model(str(_short_context_copy(default_model_dir, root, n)), torch.float32) for n in (58, 119)}


# ------------------------------------------------------- the end of the context
@pytest.mark.parametrize("positions,tree_name,budgets", [(58, "tree16", (16,)), (119, "mc_sim_7b_63", (16, 80))])
@pytest.mark.parametrize("kind", ["hydra", "medusa"])
def test_speculation_runs_to_the_last_position_like_ar(short_models, positions, tree_name, budgets, kind):
    loaded = short_models[positions]
    ids = loaded.tokenizer.encode_chat(POEM)
    assert len(ids) == 51
    spec = SpeculativeDecoder(loaded.model, load_model_heads(loaded, kind, None), load_tree(tree_name))
    for budget in budgets:
        # No EOS, so the context (not the text) ends the run.
        ar = ArDecoder(loaded.model).generate(ids, budget, ())
        out = spec.generate(ids, budget, ())
        assert out.token_ids == ar.token_ids, (budget, out.records)
        assert out.stop_reason == ar.stop_reason
    assert ar.stop_reason == "context" and len(ar.token_ids) == positions - len(ids)
    cut = [r for r in out.records if r.fitted_nodes is not None]
    assert cut and all(r.tree == tree_name and r.fitted_nodes < load_tree(tree_name).n_nodes for r in cut)
    assert spec.tree.name == tree_name               # and the decoder's own tree is back


def test_bank_decoding_runs_to_the_last_position_like_ar(short_models):
    loaded = short_models[58]
    ids = loaded.tokenizer.encode_chat(POEM)
    ar = ArDecoder(loaded.model).generate(ids, 16, loaded.eos_token_ids)
    for scheduler in (None, "oracle"):
        decoder = make_bank_decoder(loaded, MethodOptions(scheduler=scheduler, task="humaneval"))
        out = decoder.generate(ids, 16, loaded.eos_token_ids)
        assert out.token_ids == ar.token_ids and out.stop_reason == ar.stop_reason == "context"
        # bench's modeled tok/s sums these: a step cut at the end still has the chosen tree's cost.
        assert all(r.modeled_ms is not None for r in out.records)


def test_a_tree_larger_than_the_context_is_a_usage_error(short_models):
    loaded = short_models[58]
    spec = SpeculativeDecoder(loaded.model, load_model_heads(loaded, "hydra", None), load_tree("mc_sim_7b_63"))
    with pytest.raises(UsageError, match="64 nodes but the model's context holds only 58"):
        spec.generate(loaded.tokenizer.encode_chat("Hi"), 4, ())


def test_run_near_the_end_of_the_context_says_context(capsys, short_models, tmp_path):
    folder = str(short_models[58].folder)
    prompt = tmp_path / "poem.txt"
    prompt.write_text(POEM)
    outputs = {}
    for method in ("ar", "hydra", "entmtp"):
        extra = ("--tree", "tree16") if method == "hydra" else ()
        code, out, err = _run(capsys, "run", "--model", folder, "--prompt-file", str(prompt), "--method", method,
                              *extra, "--max-new-tokens", "16", "--dtype", "fp32", "--json")
        assert code == 0, err
        outputs[method] = json.loads(out)
    for method in ("hydra", "entmtp"):
        assert outputs[method]["token_ids"] == outputs["ar"]["token_ids"]
        assert outputs[method]["stop_reason"] == outputs["ar"]["stop_reason"]


# ------------------------------------------------------------------ Ctrl-C
def test_an_uncaught_ctrl_c_exits_130(capsys, monkeypatch, tiny_folder, prompt_txt):  # noqa: F811
    import entmtp.model.loader

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(entmtp.model.loader, "load_model", interrupted)
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt))
    assert code == 130
    _one_error_line(err, "interrupted")


def test_an_interrupted_run_says_how_to_continue(capsys, monkeypatch, tiny_folder, tmp_path):  # noqa: F811
    prompts = tmp_path / "three.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Count to {n}."}) + "\n" for n in (1, 2, 3)))
    calls = {"n": 0}
    generate = ArDecoder.generate

    def second_call_interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(ArDecoder, "generate", second_call_interrupted)
    args = ["run", "--model", str(tiny_folder), "--prompt-file", str(prompts), "--raw", "--max-new-tokens", "2",
            "--json"]
    code, out, err = _run(capsys, *args)
    assert code == 130
    # stderr: the finished prompt's summary line, then the one error line.
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("[ar] 2 tokens") and len(lines) == 2, err
    _one_error_line(lines[1], "interrupted in prompt 2 of 3: 1 prompt(s) finished above")
    assert "--skip 1 to continue" in err and len(out.splitlines()) == 1
    monkeypatch.setattr(ArDecoder, "generate", generate)
    code, out, err = _run(capsys, *args, "--skip", "1")
    assert code == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["Count to 2.", "Count to 3."]


# ------------------------------------------------------------ run's flags
@pytest.mark.parametrize("args,needle", [
    (("--temperature", "nan"), "--temperature must be a finite number >= 0"),
    (("--temperature", "inf"), "--temperature must be a finite number >= 0"),
    (("--tree", "tree8"), "--tree goes with --method medusa, hydra or hydrapp"),
    (("--heads", "somewhere"), "--heads goes with --method medusa, hydra, hydrapp or entmtp, not --method ar"),
    (("--typical", "--temperature", "1"), "--typical goes with"),
    (("--head-kind", "medusa"), "--head-kind goes with --method entmtp"),
    (("--method", "hydra", "--bank", "x"), "--bank goes with --method entmtp"),
    (("--method", "hydra", "--task", "gsm8k"), "--task goes with --method entmtp"),
    (("--method", "entmtp", "--tree", "n0"), "--tree goes with"),
    (("--method", "entmtp", "--scheduler", "rate", "--tree", "n0"), "not --method entmtp --scheduler rate"),
    (("--method", "entmtp", "--bank", "b.json", "--head-kind", "medusa"), "with --bank the bank says"),
    (("--skip", "-1"), "--skip must be >= 0"),
])
def test_flags_that_do_not_apply_are_usage_errors_before_the_model_loads(capsys, tmp_path, prompt_txt,  # noqa: F811
                                                                          args, needle):
    # A model that does not exist: the flag must be refused first.
    code, _, err = _run(capsys, "run", "--model", str(tmp_path / "no-model"), "--prompt-file", str(prompt_txt),
                        *args)
    assert code == 2, err
    _one_error_line(err, needle)


def test_seed_in_greedy_decoding_warns(capsys, tiny_folder, prompt_txt):  # noqa: F811
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(prompt_txt), "--raw",
                        "--max-new-tokens", "2", "--seed", "3")
    assert code == 0 and "warning: --seed has no effect in greedy decoding" in err


def test_signal_alone_selects_the_rate_scheduler_with_it(capsys, default_model_dir, prompt_txt):  # noqa: F811
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt),
                          "--method", "entmtp", "--signal", "accept", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["method"] == "entmtp-rate-accept"


def test_run_help_reads_its_defaults_from_the_package(capsys):
    from entmtp.defaults import DEFAULT_HEAD_KIND, DEFAULT_TASK, DEFAULT_TREE
    from entmtp.model.registry import DEFAULT_MODEL

    code, out, _ = _run(capsys, "run", "--help")
    text = " ".join(out.split())
    assert code == 0
    for default in (DEFAULT_TREE, DEFAULT_TASK, DEFAULT_MODEL, DEFAULT_HEAD_KIND):
        assert f"default {default}" in text
    # The scheduler and signal defaults live in each bank, so help points there.
    assert "now (default" not in text and "rate (default)" not in text
    assert text.count("default: the bank's recommended one") == 2


# ------------------------------------------------------------------ prompts
def test_prompt_on_the_command_line_and_from_stdin(capsys, monkeypatch, tiny_folder):  # noqa: F811
    base = ["run", "--model", str(tiny_folder), "--raw", "--max-new-tokens", "3", "--json"]
    code, out, err = _run(capsys, *base, "--prompt", "Say hello.")
    assert code == 0, err
    from_flag = json.loads(out)
    assert from_flag["prompt"] == "Say hello."
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say hello.\n"))
    code, out, err = _run(capsys, *base, "--prompt-file", "-")
    assert code == 0, err
    assert json.loads(out)["token_ids"] == from_flag["token_ids"]


@pytest.mark.parametrize("args,code,needle", [
    ((), 2, "give one of --prompt TEXT or --prompt-file PATH"),
    (("--prompt", "a", "--prompt-file", "b.txt"), 2, "give one of --prompt TEXT or --prompt-file PATH"),
    (("--prompt", "  "), 2, "--prompt is empty"),
    (("--prompt", "a", "--skip", "1"), 2, "--skip goes with --prompt-file"),
])
def test_prompt_source_mistakes(capsys, tiny_folder, args, code, needle):  # noqa: F811
    got, _, err = _run(capsys, "run", "--model", str(tiny_folder), *args)
    assert got == code
    _one_error_line(err, needle)


def test_a_prompt_path_that_is_a_directory_says_so(capsys, tiny_folder, tmp_path):  # noqa: F811
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(tmp_path))
    assert code == 1
    _one_error_line(err, "is a directory, not a file")


# ------------------------------------------------------------------- bench
def test_bench_data_with_a_repeated_id_is_refused_by_name(capsys, tmp_path):
    data = tmp_path / "dup.jsonl"
    data.write_text('{"id": "a", "prompt": "One."}\n{"id": "b", "prompt": "Two."}\n{"id": "a", "prompt": "Three."}\n')
    with pytest.raises(tasks.EntmtpError, match="record ids must be unique; repeated: 'a' x2"):
        tasks.load_task("sharegpt", data, tasks.Skipped())
    code, _, err = _run(capsys, "bench", "--task", "sharegpt", "--data", str(data), "--methods", "ar",
                        "--out", str(tmp_path / "out"))
    assert code == 1
    _one_error_line(err, "'a' x2")
    assert not (tmp_path / "out").exists()  # refused before any work


def _bench_records(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = [(r["task"], r["method"], r["prompt_id"]) for r in records]
    assert len(keys) == len(set(keys))
    return {key: r["token_ids"] for key, r in zip(keys, records)}


def test_bench_interrupted_by_sigint_exits_130_and_resumes_to_the_same_records(default_model_dir, tmp_path):
    exe = shutil.which("entmtp") or str(Path(sys.executable).with_name("entmtp"))
    data = tmp_path / "five.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{n}", "prompt": f"Name {n + 2} colours, one per line."}) + "\n"
                            for n in range(4)))

    def command(out: Path, *extra: str) -> list[str]:
        return [exe, "bench", "--model", str(default_model_dir), "--task", "sharegpt", "--data", str(data),
                "--methods", "ar,hydra@tree8", "--max-new-tokens", "12", "--dtype", "fp32", "--out", str(out), *extra]

    reference = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("entmtp: error: interrupted: ") and "rerun the same command with --resume" in last, err
    kept = _bench_records(out)
    assert 1 <= len(kept) < 8 and f"{len(kept)} finished" in last
    resumed = subprocess.run(command(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _bench_records(out) == _bench_records(tmp_path / "whole")


def test_bench_resume_with_other_settings_names_them(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    record = {"task": "humaneval", "method": "ar", "prompt_id": "HumanEval/0",
              "settings": {"model": None, "data": None, "split": "evaluation", "max_new_tokens": 8,
                           "dtype": "bf16", "device": "cpu"}}
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    code, _, err = _run(capsys, "bench", "--task", "humaneval", "--methods", "ar", "--max-new-tokens", "12",
                        "--out", str(out), "--resume")
    assert code == 2
    _one_error_line(err, "max_new_tokens 8 there, 12 now")


def test_an_empty_model_name_and_an_oversized_draft_vocabulary_are_usage_errors(capsys, default_model_dir,
                                                                                prompt_txt):  # noqa: F811
    code, _, err = _run(capsys, "run", "--model", "", "--prompt-file", str(prompt_txt))
    assert code == 2
    _one_error_line(err, "--model is empty")
    # Asking for more shortlisted tokens than the list holds was silently cut to the list.
    code, _, err = _run(capsys, "run", "--model", str(default_model_dir), "--prompt-file", str(prompt_txt),
                        "--method", "hydra", "--draft-vocab", "99999999")
    assert code == 2
    _one_error_line(err, "holds 13312 tokens")  # the shipped Hydra list


def test_an_unknown_tree_fails_before_the_model_loads(capsys, tmp_path, prompt_txt):  # noqa: F811
    code, _, err = _run(capsys, "run", "--model", str(tmp_path / "no-model"), "--prompt-file", str(prompt_txt),
                        "--method", "hydra", "--tree", "nope")
    assert code == 2
    _one_error_line(err, "unknown tree 'nope'")


def test_prompt_text_that_is_not_utf8_is_one_line(capsys, monkeypatch, tiny_folder, tmp_path):  # noqa: F811
    class Stdin(io.StringIO):
        buffer = io.BytesIO(b"\xff\xfe hello")

    monkeypatch.setattr(sys, "stdin", Stdin())
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", "-")
    assert code == 1
    _one_error_line(err, "standard input is not UTF-8 (byte 0)")
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt", "caf\udce9")
    assert code == 1
    _one_error_line(err, "--prompt: the prompt holds an invalid character at position 3")
    bad = tmp_path / "surrogate.jsonl"
    bad.write_text('{"prompt": "a\\ud800b"}\n')
    code, _, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(bad))
    assert code == 1
    _one_error_line(err, "surrogate.jsonl:1: the prompt holds an invalid character")


def test_a_prompt_file_may_be_a_pipe(capsys, tiny_folder, tmp_path):  # noqa: F811
    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)
    import threading

    writer = threading.Thread(target=lambda: fifo.write_text("Say hello.\n"))
    writer.start()
    code, out, err = _run(capsys, "run", "--model", str(tiny_folder), "--prompt-file", str(fifo), "--raw",
                          "--max-new-tokens", "2", "--json")
    writer.join(timeout=10)
    assert code == 0, err
    assert json.loads(out)["prompt"] == "Say hello."


def test_bench_split_does_not_go_with_data(capsys, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"id": "a", "prompt": "One."}\n')
    code, _, err = _run(capsys, "bench", "--task", "sharegpt", "--data", str(data), "--split", "calibration",
                        "--out", str(tmp_path / "out"))
    assert code == 2
    _one_error_line(err, "--split does not go with --data")


def test_resume_survives_a_line_torn_inside_a_character(capsys, tmp_path):
    from entmtp.bench.run import _read_results

    results = tmp_path / "results.jsonl"
    whole = json.dumps({"task": "t", "method": "ar", "prompt_id": "a", "text": "é"}, ensure_ascii=False)
    results.write_bytes(whole.encode() + b"\n" + whole.encode()[:-3])  # the second line cut inside "é"
    records, torn = _read_results(results)
    assert [r["prompt_id"] for r in records] == ["a"] and torn == 1
