"""Bad input to calibrate, trees, models, heads and kernels: one line on stderr, the
right exit status, and, for output paths and options, before the model loads.

Most cases run with `no_model`, which makes loading a model fail the test: the
mistake has to be caught before any work starts. We run as root, so a folder is
made unwritable by putting it under a regular file (or /proc), not by chmod.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_cli import _one_error_line
from test_cli import _run as _cli

from entmtp.tune.calibrate import CALIBRATION_FORMAT


def _ends_with_error(err: str, needle: str) -> None:
    """Progress lines, then the one error line last (a command that had started working)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("entmtp: error: ")] == lines[-1:], err
    assert needle in lines[-1] and "Traceback" not in err, err


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was caught")

    monkeypatch.setattr("entmtp.model.loader.load_model", refuse)
    monkeypatch.setattr("entmtp.tune.calibrate.load_model", refuse)


@pytest.fixture
def afile(tmp_path) -> Path:
    """A regular file: any path under it cannot be written."""
    path = tmp_path / "afile"
    path.write_text("x")
    return path


def _calibration(**changes) -> dict:
    """The smallest document read_calibration accepts."""
    columns = {c: [0.5, 0.5] for c in ("entropy_ema", "accept_ema", "confidence_prev", "confidence", "probe",
                                       "root_entropy")}
    document = {
        "format": CALIBRATION_FORMAT,
        "provenance": {"model": {"name": "m"}, "heads": {"kind": "hydra", "n_heads": 1, "top_k": 2,
                                                         "fingerprint": "fp"},
                       "task": "gsm8k", "split": "calibration", "prompt_ids": ["a"], "max_new_tokens": 4,
                       "dtype": "fp32", "device": "cpu"},
        "window": 4, "superset": [[0], [1]], "probe": {"weights": [0.0], "lambda": 1.0, "out_of_fold_r": 0.0},
        "steps": {**columns, "prompt": [0, 0], "accepted": [1, 0], "accepted_ranks": [[0], []]},
        "cost_curve": [{"nodes": 0, "depth": 0, "ms": 10.0}, {"nodes": 1, "depth": 1, "ms": 12.0}],
    }
    document.update(changes)
    return document


@pytest.fixture
def calibration_file(tmp_path) -> Path:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(_calibration()))
    return path


# ------------------------------------------------------------------ output paths, before any work
def test_calibrate_out_is_checked_before_the_model_loads(capsys, no_model, afile, tmp_path):
    base = ("calibrate", "--task", "humaneval", "--limit", "1")
    code, _, err = _cli(capsys, *base, "--out", str(afile / "cal.json"))
    assert code == 1
    _one_error_line(err, f"--out {afile / 'cal.json'}: {afile} is a file, not a folder")
    code, _, err = _cli(capsys, *base, "--out", "/proc/entmtp-test/cal.json")
    assert code == 1
    _one_error_line(err, "cannot write in /proc")
    code, _, err = _cli(capsys, *base, "--out", str(tmp_path))
    assert code == 2
    _one_error_line(err, "is a folder; give a file path")


def test_calibrate_default_out_folder_is_checked_too(capsys, no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("runs").write_text("not a folder")
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--limit", "1")
    assert code == 1
    _one_error_line(err, "the default --out folder runs/calibration")


def test_trees_build_out(capsys, no_model, afile, calibration_file, tmp_path):
    base = ("trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0")
    code, _, err = _cli(capsys, *base, "--out", str(afile / "bank.json"))
    assert code == 1
    _one_error_line(err, f"{afile} is a file, not a folder")
    code, _, err = _cli(capsys, *base, "--out", str(tmp_path))
    assert code == 2
    _one_error_line(err, "is a folder; give a file path")
    code, _, err = _cli(capsys, *base, "--name", "sub/bank")
    assert code == 2
    _one_error_line(err, "--name must be a bank name, not a path")


def test_import_gguf_out(capsys, tiny_gguf, afile, tmp_path):
    gguf, _ = tiny_gguf()
    code, _, err = _cli(capsys, "models", "import-gguf", str(gguf), str(afile / "model"))
    assert code == 1
    _one_error_line(err, f"{afile} is a file, not a folder")
    code, _, err = _cli(capsys, "models", "import-gguf", str(gguf), "/proc/entmtp-test/model")
    assert code == 1
    _one_error_line(err, "cannot write in /proc")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "models", "import-gguf", str(gguf), str(full))
    assert code == 2
    _one_error_line(err, "is not empty")
    code, _, err = _cli(capsys, "models", "import-gguf", str(tmp_path), str(tmp_path / "out"))
    assert code == 1
    _one_error_line(err, "is a folder, not a file")


def test_heads_train_out(capsys, no_model, afile):
    code, _, err = _cli(capsys, "heads", "train", "--out", str(afile))
    assert code == 2
    _one_error_line(err, f"--out {afile} is a file; give a folder path")
    code, _, err = _cli(capsys, "heads", "train", "--out", str(afile / "run"))
    assert code == 1
    _one_error_line(err, f"{afile} is a file, not a folder")


def test_heads_shortlist_paths(capsys, no_model, tmp_path):
    code, _, err = _cli(capsys, "heads", "shortlist", "--heads", str(tmp_path / "missing"))
    assert code == 1
    _one_error_line(err, "does not exist")
    heads = tmp_path / "run" / "heads"
    (heads / "draft_vocab.json").mkdir(parents=True)  # where the list is written: a folder
    code, _, err = _cli(capsys, "heads", "shortlist", "--heads", str(heads))
    assert code == 2
    _one_error_line(err, "draft_vocab.json is a folder")


def test_kernels_tune_cache_is_checked_first(capsys, no_model, afile, monkeypatch):
    monkeypatch.setenv("ENTMTP_HOME", str(afile / "home"))
    code, _, err = _cli(capsys, "kernels", "tune")
    assert code == 1
    _one_error_line(err, f"GEMM choice cache {afile / 'home'}")


# ------------------------------------------------------------------ options
KERNEL_BENCH = [
    (("--dtype", "fp64"), "--dtype must be a comma list of bf16, fp32, fp16, not 'fp64'"),
    (("--dtype", "bf16,"), "--dtype must be a comma list of bf16, fp32, fp16, not ''"),
    (("--T", "0"), "--T must be a comma list of integers >= 1, got 0"),
    (("--T", "-1"), "--T must be a comma list of integers >= 1, got -1"),
    (("--T", "abc"), "--T must be a comma list of integers >= 1, not 'abc'"),
    (("--L", "-1"), "--L must be a comma list of integers >= 0, got -1"),
    (("--V", "0"), "--V must be a comma list of integers >= 1, got 0"),
    (("--N", "0"), "--N must be a comma list of integers >= 1, got 0"),
    (("--repeats", "0"), "--repeats must be >= 1, got 0"),
    (("--repeats", "-2"), "--repeats must be >= 1, got -2"),
    (("--device", "tpu"), "--device must be cpu or cuda, not 'tpu'"),
    (("--skip", "both"), "--skip must be attention or entropy, not 'both'"),
    (("--bogus",), "No such option: --bogus"),
]


@pytest.mark.parametrize("args,needle", KERNEL_BENCH, ids=[" ".join(a) for a, _ in KERNEL_BENCH])
def test_kernels_bench_usage_errors(capsys, args, needle):
    # --quick and one repeat first, so a regression fails fast rather than benching.
    code, out, err = _cli(capsys, "kernels", "bench", "--quick", "--repeats", "1", *args)
    assert code == 2
    _one_error_line(err, needle)
    assert "tree_attention" not in out  # nothing was timed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_kernels_bench_cuda_without_gpu(capsys):
    code, _, err = _cli(capsys, "kernels", "bench", "--device", "cuda")
    assert code == 1
    _one_error_line(err, "no CUDA GPU is available")


def test_kernels_tune_repeats(capsys, no_model):
    code, _, err = _cli(capsys, "kernels", "tune", "--repeats", "0")
    assert code == 2
    _one_error_line(err, "--repeats must be >= 1, got 0")


HEADS_TRAIN = [
    (("--lr", "-1"), "--lr must be a positive finite number, got -1.0"),
    (("--lr", "0"), "--lr must be a positive finite number"),
    (("--lr", "nan"), "--lr must be a positive finite number, got nan"),
    (("--lr", "inf"), "--lr must be a positive finite number, got inf"),
    (("--n-heads", "0"), "--n-heads must be an integer >= 1, got 0"),
    (("--n-layers", "-1"), "--n-layers must be an integer >= 1, got -1"),
    (("--sharegpt-prompts", "-1"), "--sharegpt-prompts must be an integer >= 0, got -1"),
    (("--code-prompts", "-5"), "--code-prompts must be an integer >= 0, got -5"),
    (("--sharegpt-prompts", "0", "--code-prompts", "0"), "no training prompts"),
    (("--gen-tokens", "1"), "--gen-tokens must be an integer >= 2, got 1"),
    (("--steps", "0"), "--steps must be an integer >= 1, got 0"),
    (("--batch-size", "0"), "--batch-size must be an integer >= 1, got 0"),
    (("--corpus-batch", "0"), "--corpus-batch must be an integer >= 1, got 0"),
    (("--train-dtype", "fp16"), "--train-dtype"),
    (("--dtype", "fp64"), "--dtype must be one of"),
]


@pytest.mark.parametrize("args,needle", HEADS_TRAIN, ids=[" ".join(a) for a, _ in HEADS_TRAIN])
def test_heads_train_options_exit_2_before_the_model_loads(capsys, no_model, tmp_path, args, needle):
    code, _, err = _cli(capsys, "heads", "train", "--out", str(tmp_path / "run"), *args)
    assert code == 2
    _one_error_line(err, needle)
    assert not (tmp_path / "run").exists()


CALIBRATE = [
    (("--window", "nan"), "--window must be a finite number >= 1, got nan"),
    (("--window", "0.5"), "--window must be a finite number >= 1, got 0.5"),
    (("--superset-nodes", "1"), "--superset-nodes must be >= 2, got 1"),
    (("--limit", "-3"), "--limit must be >= 1, got -3"),
    (("--max-new-tokens", "0"), "--max-new-tokens must be >= 1, got 0"),
    (("--repeats", "1"), "No such option: --repeats"),      # nothing is timed: a step's cost is the machine's
    (("--task", "poetry"), "unknown task 'poetry'"),
]


@pytest.mark.parametrize("args,needle", CALIBRATE, ids=[" ".join(a) for a, _ in CALIBRATE])
def test_calibrate_options_before_the_model_loads(capsys, no_model, args, needle):
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", *args)
    assert code == 2
    _one_error_line(err, needle)


# ------------------------------------------------------------------ input paths and files
def test_missing_heads_are_named_before_the_model_loads(capsys, no_model, calibration_file, tmp_path):
    missing = tmp_path / "missing-heads"
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--heads", str(missing))
    assert code == 1
    _one_error_line(err, f"--heads {missing} does not exist")
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "1",
                        "--heads", str(missing), "--out", str(tmp_path / "bank.json"))
    assert code == 1
    _one_error_line(err, f"--heads {missing} does not exist")


@pytest.mark.parametrize("damage,needle", [
    (lambda d: d.update(provenance={}), "missing or malformed key 'provenance.model'"),
    (lambda d: d["provenance"]["heads"].pop("top_k"), "missing key 'provenance.heads.top_k'"),
    (lambda d: d.update(steps="x"), "'steps' has the wrong type (str)"),
    (lambda d: d["steps"].update(probe=[0.1]), "'steps.probe' must be a list with one value per step"),
    (lambda d: d.update(superset=[[-1]]), "'superset' must be a list of rank paths"),
])
def test_damaged_calibration_is_one_line(capsys, tmp_path, damage, needle):
    document = _calibration()
    damage(document)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(document))
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(path), "--rollout-prompts", "0",
                        "--out", str(tmp_path / "bank.json"))
    assert code == 1
    _one_error_line(err, needle)


def test_trees_build_never_overwrites_its_calibration(capsys, calibration_file):
    before = calibration_file.read_text()
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0",
                        "--out", str(calibration_file))
    assert code == 2
    _one_error_line(err, "is the calibration file itself")
    assert calibration_file.read_text() == before


def test_trees_build_unknown_task(capsys, calibration_file, tmp_path):
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0",
                        "--task", "poetry", "--out", str(tmp_path / "bank.json"))
    assert code == 2
    _one_error_line(err, "unknown task 'poetry'")
    assert not (tmp_path / "bank.json").exists()


# ------------------------------------------------------------------ heads train: resuming and Ctrl-C
def _earlier_run(folder: Path, **config) -> None:
    """prompts.json as `heads train` writes it, for the CLI's default options changed by `config`."""
    from entmtp.heads.train import TrainConfig

    folder.mkdir(parents=True, exist_ok=True)
    document = {"config": dataclasses.asdict(TrainConfig(**config)), "prompts": [{"prompt": "Say hi."}]}
    (folder / "prompts.json").write_text(json.dumps(document))


def _fake_loaded(monkeypatch) -> None:
    """A stand-in for the model: enough for train_heads to reach the corpus step."""
    loaded = SimpleNamespace(folder=Path("fake-model"),
                             config=SimpleNamespace(hidden_size=8, vocab_size=16, max_position_embeddings=1024),
                             tokenizer=SimpleNamespace(encode_chat=lambda text: [1, 2, 3]))
    monkeypatch.setattr("entmtp.model.loader.load_model", lambda *a, **k: loaded)


def test_heads_train_refuses_a_folder_of_other_options(capsys, no_model, tmp_path):
    run = tmp_path / "run"
    _earlier_run(run, gen_tokens=64)
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 2
    _one_error_line(err, "holds a corpus made with --gen-tokens 64; rerun with those options to use it")
    _earlier_run(run, corpus_batch=64)
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 2
    _one_error_line(err, "holds a corpus made with --corpus-batch 64; rerun with those options to use it")
    # Another training on the same corpus is fine until a checkpoint says which one this folder holds.
    import torch

    from entmtp.heads.train import TrainConfig, check_out_dir

    _earlier_run(run)
    check_out_dir(TrainConfig(n_heads=3, kind="hydrapp"), run)
    torch.save({"step": 5, "config": dataclasses.asdict(TrainConfig(n_heads=3))}, run / "checkpoint.pt")
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 2
    _one_error_line(err, "holds a run made with --n-heads 3; rerun with those options to resume")
    # A checkpoint from before checkpoints recorded their config, and before --loss existed: hard labels.
    torch.save({"step": 5}, run / "checkpoint.pt")
    document = json.loads((run / "prompts.json").read_text())
    # (and before --corpus-batch and --train-dtype: 16 and fp32, the defaults, so not named)
    for option in ("loss", "corpus_batch", "train_dtype"):
        del document["config"][option]
    (run / "prompts.json").write_text(json.dumps(document))
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 2
    _one_error_line(err, "holds a run made with --loss hard")
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    code, _, err = _cli(capsys, "heads", "train", "--out", str(unrelated))
    assert code == 2
    _one_error_line(err, "is not empty and holds no prompts.json")


def test_heads_train_damaged_files(capsys, tmp_path, monkeypatch):
    _fake_loaded(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "prompts.json").write_text("{not json")
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 1
    _one_error_line(err, "prompts.json: not valid JSON")
    _earlier_run(run)
    (run / "corpus.pt").write_bytes(b"junk")
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 1
    _one_error_line(err, "corpus.pt cannot be read")


def test_heads_train_ctrl_c_says_what_is_kept(capsys, tmp_path, monkeypatch):
    _fake_loaded(monkeypatch)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("entmtp.heads.train.build_corpus", interrupt)
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run), "--sharegpt-prompts", "0",
                        "--code-prompts", "2")
    assert code == 130
    _one_error_line(err, f"interrupted: only the prompts are in {run}")
    assert "rerun the same command to resume" in err and (run / "prompts.json").is_file()
    # Later, with a checkpoint: the same command is accepted as a resume, and Ctrl-C names the step.
    (run / "corpus.pt").write_bytes(b"stand-in")
    torch.save({"step": 300}, run / "checkpoint.pt")
    monkeypatch.setattr("entmtp.heads.train.train_heads", interrupt)
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run), "--sharegpt-prompts", "0",
                        "--code-prompts", "2")
    assert code == 130
    _one_error_line(err, f"interrupted: the prompts, the corpus and the checkpoint at step 300 are in {run}; "
                         "rerun the same command to resume")


# ------------------------------------------------------------------ calibrate: Ctrl-C and resuming
def test_calibrate_ctrl_c_before_any_prompt_keeps_nothing(capsys, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("entmtp.model.loader.load_model", interrupt)
    out = tmp_path / "cal.json"
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--limit", "1", "--out", str(out))
    assert code == 130
    _one_error_line(err, "interrupted: nothing was written")
    assert not out.exists() and not (tmp_path / "cal.json.partial").exists()


def test_calibrate_resumes_after_ctrl_c(capsys, default_model_dir, tmp_path, monkeypatch):
    from entmtp.tune.calibrate import SpeculativeDecoder

    out, partial = tmp_path / "cal.json", tmp_path / "cal.json.partial"
    args = ("calibrate", "--model", str(default_model_dir), "--task", "humaneval", "--head-kind", "medusa",
            "--limit", "2", "--max-new-tokens", "6", "--superset-nodes", "3", "--out", str(out))
    generate = SpeculativeDecoder.generate
    calls = []

    def second_prompt_interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, *a, **k)

    # 1. Ctrl-C while decoding the second prompt: the first is kept.
    with monkeypatch.context() as patch:
        patch.setattr(SpeculativeDecoder, "generate", second_prompt_interrupted)
        code, _, err = _cli(capsys, *args)
    assert code == 130
    _ends_with_error(err, f"interrupted: 1 of 2 calibration prompts are decoded and kept in {partial}; rerun the "
                          "same command to resume")
    assert [p.name for p in partial.glob("prompt-*.pt")] == ["prompt-00000.pt"] and not out.exists()
    # 2. The same command decodes only the second; Ctrl-C while fitting the probe keeps both.
    with monkeypatch.context() as patch:
        patch.setattr("entmtp.tune.calibrate.fit_probe", _interrupt)
        code, _, err = _cli(capsys, *args)
    assert code == 130 and "1 of 2 prompts were decoded by an earlier run" in err
    _ends_with_error(err, f"interrupted after decoding: all 2 decoded prompts are kept in {partial}")
    # 3. Nothing left to decode: write, and clean up.
    code, _, err = _cli(capsys, *args)
    assert code == 0, err
    assert "2 of 2 prompts were decoded by an earlier run" in err
    document = json.loads(out.read_text())
    assert set(document["steps"]["prompt"]) == {0, 1}
    assert len(document["steps"]["probe"]) == len(document["steps"]["accepted"]) > 0
    assert not partial.exists()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_trees_build_ctrl_c(capsys, calibration_file, tmp_path, monkeypatch):
    monkeypatch.setattr("entmtp.tune.source.build_source", _interrupt)
    out = tmp_path / "bank.json"
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0",
                        "--out", str(out))
    assert code == 130
    _one_error_line(err, f"interrupted: nothing was written (the bank is written to {out} only when complete)")


def test_kernels_tune_ctrl_c_names_the_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTMTP_HOME", str(tmp_path / "home"))
    model = SimpleNamespace(layers=[], lm_head=torch.zeros(4, 2))
    monkeypatch.setattr("entmtp.model.loader.load_model", lambda *a, **k: SimpleNamespace(model=model))
    monkeypatch.setattr("entmtp.model.linear.tune", _interrupt)
    code, _, err = _cli(capsys, "kernels", "tune")
    assert code == 130
    _ends_with_error(err, f"the row counts timed so far are cached in {tmp_path / 'home' / 'gemm'}")


# ------------------------------------------------------------------ review fixes
def _partial_with_prompts(folder: Path, n: int = 1, **changes) -> None:
    """OUT.partial/ as an earlier, interrupted `calibrate --task humaneval` left it (CLI defaults,
    changed by `changes`), holding its first `n` decoded prompts."""
    from entmtp.tune.calibrate import partial_key

    options = dict(task="humaneval", max_new_tokens=96, superset_nodes=64, window=4.0, dtype_name="bf16")
    options.update(changes)
    folder.mkdir(parents=True)
    key = partial_key(model={"name": "m"}, heads="fp", device="cpu", **options)
    (folder / "key.json").write_text(json.dumps(key))
    for i in range(n):
        torch.save({"id": f"p{i}"}, folder / f"prompt-{i:05d}.pt")


def test_calibrate_refuses_to_discard_prompts_decoded_with_other_options(capsys, no_model, tmp_path):
    out, partial = tmp_path / "cal.json", tmp_path / "cal.json.partial"
    _partial_with_prompts(partial, 2, max_new_tokens=6, window=2.0)
    before = sorted(p.name for p in partial.iterdir())
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--max-new-tokens", "8", "--out", str(out))
    assert code == 2
    _one_error_line(err, f"{partial} holds 2 prompts decoded with other options (--max-new-tokens 6 there, 8 now; "
                         f"--window 2.0 there, 4.0 now); rerun with the options it was made with to resume, "
                         f"or delete {partial} to start over")
    assert sorted(p.name for p in partial.iterdir()) == before


def test_calibrate_ctrl_c_while_loading_names_an_earlier_partial_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("entmtp.model.loader.load_model", _interrupt)
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "mymodel"  # a folder: resolved as is (the default --out is named after it)
    model.mkdir()
    partial = Path("runs/calibration/mymodel-hydra-humaneval.json.partial")
    _partial_with_prompts(partial)
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--limit", "2", "--model", str(model))
    assert code == 130
    _one_error_line(err, f"interrupted while loading the model: nothing new was written; {partial} holds 1 of 2 "
                         "calibration prompts decoded by an earlier run; rerun the same command to resume")
    assert (partial / "prompt-00000.pt").is_file()
    # With --out too, and all prompts kept: what is left is the timing.
    out = tmp_path / "cal.json"
    _partial_with_prompts(tmp_path / "cal.json.partial")
    code, _, err = _cli(capsys, "calibrate", "--task", "humaneval", "--limit", "1", "--out", str(out))
    assert code == 130
    _one_error_line(err, f"interrupted while loading the model: nothing new was written; {out}.partial holds 1 of "
                         f"1 calibration prompts decoded by an earlier run; rerun the same command to write {out}")


def test_calibrate_help_states_the_real_defaults(capsys):
    code, out, _ = _cli(capsys, "calibrate", "--help")
    assert code == 0
    text = " ".join(out.split())
    for default in ("(default hydra)", "(default 96)", "default 64)", "(default 4)", "(default bf16)",
                    "(default cpu)"):
        assert default in text, default


def test_trees_show_refuses_a_fifo_instead_of_hanging(tmp_path):
    import os
    import subprocess
    import sys

    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    repo = Path(__file__).resolve().parents[1]
    # In a child: reading a FIFO nobody writes to would block this test run forever.
    proc = subprocess.run([sys.executable, "-m", "cli.main", "trees", "show", str(fifo)], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, f"file {str(fifo)!r} is not a regular file")


KERNEL_BENCH_BOUNDS = [
    (("--V", "1000000000000", "--skip", "attention"), "--V values must be at most 1048576, got 1000000000000"),
    (("--N", "1000000000000", "--skip", "attention"), "--N values must be at most 8192, got 1000000000000"),
    (("--T", "1000000000000", "--skip", "entropy"), "--T values must be at most 4096, got 1000000000000"),
    (("--L", "1000000000000", "--skip", "entropy"), "--L values must be at most 131072, got 1000000000000"),
]


@pytest.mark.parametrize("args,needle", KERNEL_BENCH_BOUNDS, ids=[" ".join(a[:2]) for a, _ in KERNEL_BENCH_BOUNDS])
def test_kernels_bench_upper_bounds(capsys, args, needle):
    code, out, err = _cli(capsys, "kernels", "bench", "--quick", "--repeats", "1", *args)
    assert code == 2
    _one_error_line(err, needle)
    assert "median ms" not in out


def test_kernels_bench_repeats_bound():
    from entmtp.bench.kernels import MAX_REPEATS, bench_options
    from entmtp.errors import UsageError

    assert bench_options(repeats=MAX_REPEATS).repeats == MAX_REPEATS
    with pytest.raises(UsageError, match=f"--repeats must be at most {MAX_REPEATS}, got {MAX_REPEATS + 1}"):
        bench_options(repeats=MAX_REPEATS + 1)


def test_kernels_bench_help_states_the_bounds(capsys):
    from entmtp.bench import kernels

    code, out, _ = _cli(capsys, "kernels", "bench", "--help")
    assert code == 0
    text = " ".join(out.split())
    for bound in (kernels.MAX_T, kernels.MAX_L, kernels.MAX_V, kernels.MAX_N, kernels.MAX_REPEATS):
        assert f"to {bound})" in text, bound


def test_kernels_bench_out_of_memory_is_one_line(capsys, monkeypatch):
    def cannot_allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("entmtp.bench.kernels.bench_entropy", cannot_allocate)
    code, _, err = _cli(capsys, "kernels", "bench", "--quick", "--repeats", "1", "--skip", "attention",
                        "--dtype", "fp32")
    assert code == 1
    _one_error_line(err, "benching token_entropy (fp32) ran out of memory (you tried to allocate 4000000000000 "
                         "bytes); give smaller --V or --N")

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("entmtp.bench.kernels.bench_entropy", bug)  # anything else stays a bug
    code, _, err = _cli(capsys, "kernels", "bench", "--quick", "--repeats", "1", "--skip", "attention",
                        "--dtype", "fp32")
    assert code == 1
    _one_error_line(err, "internal error: RuntimeError: shape mismatch")


def test_trees_build_max_nodes_bound(capsys, calibration_file, tmp_path):
    from entmtp.trees.tree import MAX_NODES

    out = tmp_path / "bank.json"
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0",
                        "--max-nodes", str(MAX_NODES + 1), "--out", str(out))
    assert code == 2
    _one_error_line(err, f"--max-nodes must be at most {MAX_NODES}, got {MAX_NODES + 1}")
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (("--model", "m"), "--model is only used by the self-rollouts, which --rollout-prompts 0 skips"),
    (("--heads", "."), "--heads is only used by the self-rollouts"),
    (("--model", "m", "--heads", "."), "--model and --heads are only used by the self-rollouts"),
])
def test_trees_build_without_rollouts_refuses_model_and_heads(capsys, calibration_file, tmp_path, extra, needle):
    out = tmp_path / "bank.json"
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(calibration_file), "--rollout-prompts", "0",
                        *extra, "--out", str(out))
    assert code == 2
    _one_error_line(err, needle)
    assert not out.exists()


def _heads_with_prompts(tmp_path: Path) -> Path:
    heads = tmp_path / "run" / "heads"
    heads.mkdir(parents=True)
    (heads / "training_prompts.json").write_text(json.dumps({"prompts": [{"prompt": "Say hi."}]}))
    return heads


@pytest.mark.parametrize("size", ["1", "9", "-3"])
def test_heads_shortlist_size_below_top_k(capsys, no_model, tmp_path, size):
    code, _, err = _cli(capsys, "heads", "shortlist", "--heads", str(_heads_with_prompts(tmp_path)), "--size", size)
    assert code == 2
    _one_error_line(err, f"--size must be >= 10 (the heads draft their top 10 tokens from the list), got {size}")


def test_heads_shortlist_size_above_the_vocabulary(capsys, tmp_path, monkeypatch):
    loaded = SimpleNamespace(config=SimpleNamespace(vocab_size=16),
                             tokenizer=SimpleNamespace(encode=lambda text: [1, 2, 3]))
    monkeypatch.setattr("entmtp.model.loader.load_model", lambda *a, **k: loaded)
    heads = _heads_with_prompts(tmp_path)
    code, _, err = _cli(capsys, "heads", "shortlist", "--heads", str(heads), "--size", "17")
    assert code == 2
    _one_error_line(err, "--size must be at most the model's vocabulary size 16, got 17")
    assert not (heads / "draft_vocab.json").exists()
    code, out, err = _cli(capsys, "heads", "shortlist", "--heads", str(heads), "--size", "16")
    assert code == 0, err
    assert "16 of 16 tokens" in out


def test_heads_shortlist_head_kind_does_not_go_with_heads(capsys, no_model, tmp_path):
    code, _, err = _cli(capsys, "heads", "shortlist", "--heads", str(_heads_with_prompts(tmp_path)),
                        "--head-kind", "hydra")
    assert code == 2
    _one_error_line(err, "--head-kind does not go with --heads")


def test_heads_train_ctrl_c_before_anything_is_written(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("entmtp.model.loader.load_model", _interrupt)
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "heads", "train", "--out", str(run))
    assert code == 130
    _one_error_line(err, "interrupted: nothing was written; rerun the same command to start")
