"""Banks that fit the machine: machine-free sources (entmtp.tune.source), this
machine's cost curve (entmtp.tune.machine_cost), and the bank derived from both."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import _one_error_line, _run
from test_entmtp import synthetic_calibration

from entmtp.errors import EntmtpError
from entmtp.schedule.bank import bank_from_document, list_banks, read_bank_document
from entmtp.schedule.cost import monotone_curve, step_ms
from entmtp.tune.build import Candidate, candidates_from
from entmtp.tune.source import build_source, check_source, corrections_from, derive_bank, is_source

ROOT = Path(__file__).resolve().parents[1]


def curve(root_ms: float, per_node_ms: float, per_depth_ms: float = 0.5) -> list[dict]:
    """A cost curve: root_ms + per_node_ms per drafted node (+ a little per depth)."""
    points = [{"nodes": 0, "depth": 0, "ms": root_ms}, {"nodes": 0, "depth": 0, "peek": True, "ms": root_ms + 1}]
    for depth in (1, 2, 3, 4):
        for nodes in (1, 2, 4, 8, 16, 32, 64, 128):
            if nodes >= depth:
                points.append({"nodes": nodes, "depth": depth,
                               "ms": root_ms + per_node_ms * nodes + per_depth_ms * depth})
    return points


# A GPU-like machine (32 nodes cost little more than one) and a CPU where a step grows
# with its rows, as measured on the Zen1 machine the first banks were built on.
FLAT, STEEP = curve(20.0, 0.02), curve(20.0, 3.0)


def curve_file(path: Path, points: list[dict], **facts) -> Path:
    from entmtp import machine

    document = {"format": "entmtp-cost-curve/1", "facts": {**machine.facts("cpu"), **facts}, "key": {},
                "date": "2026-12-01T00:00:00", "curve": points}
    path.write_text(json.dumps(document))
    return path


def shipped_sources() -> list[tuple[str, dict]]:
    found = []
    for name in list_banks():
        document, where = read_bank_document(name)
        if is_source(document):
            found.append((name, check_source(document, where)))
    return found


# --------------------------------------------------------------------------- deriving

def test_shipped_banks_are_machine_free_sources():
    sources = shipped_sources()
    assert len(sources) == len(list_banks()) == 12
    for name, source in sources:
        assert "cost_curve" not in source and source["rollouts"], name
        assert {e["name"] for e in source["extra_trees"]} >= {"mc_sim_7b_63", "tree16", "tree8"}, name
        assert source["provenance"]["split"] == "calibration"


@pytest.mark.parametrize("name", [n for n in list_banks() if n.endswith(("humaneval", "gsm8k"))])
def test_one_source_derives_different_banks_on_different_curves(name):
    """The same shipped source on two machines: each gets trees that fit its curve, and
    its static best is (by the model on the calibration steps) within 5% of the best
    static tree among all candidates on that curve."""
    source = check_source(*read_bank_document(name))
    derived = {}
    for label, points in (("flat", FLAT), ("steep", STEEP)):
        document = derive_bank(source, points, cost={"origin": label})
        bank = bank_from_document(document, label)
        derived[label] = bank
        fitted = monotone_curve(points)
        extras = [(e["name"], e["paths"]) for e in source["extra_trees"]]
        candidates = candidates_from({"steps": source["steps"], "superset": source["superset"], "cost_curve": fitted},
                                     source["max_nodes"], fitted, extras)
        corrected = corrections_from(source["rollouts"])
        best = max((1000 * (1 + (corrected(c) if c.nodes else 0.0)) / c.step_ms) for c in candidates)
        mine = bank.trees[bank.static_best]
        i = bank.static_best
        assert 1000 * (1 + bank.accept[i]) / bank.step_ms[i] >= 0.95 * best, (label, mine.name)
        assert bank.cost["origin"] == label and bank.recommended.scheduler in ("rate", "entropy", "static-best")
    flat, steep = (derived[k].trees[derived[k].static_best] for k in ("flat", "steep"))
    assert flat.n_nodes > steep.n_nodes
    assert {t.name for t in derived["flat"].trees} != {t.name for t in derived["steep"].trees}


def test_accept_bins_are_cut_on_what_a_member_would_see():
    """The recorded accept EMA is the superset's (longer accepts than any member's): the
    derived bank cuts its accept bins on the best drafting tree's own history instead."""
    source = check_source(*read_bank_document("smollm2-135m-instruct-hydra-gsm8k"))
    member = derive_bank(source, STEEP)
    superset = derive_bank(source, STEEP, accept_history="superset")
    assert member["signals"]["accept"][-1] < superset["signals"]["accept"][-1]
    assert "accept EMA bins on the history of" in member["provenance"]["built_by"]
    assert member["signals"]["entropy"] == superset["signals"]["entropy"]


def test_corrections_are_ratios_measured_on_the_rollouts_own_steps():
    small = Candidate("a", ((0,), (0, 0)), 2, 1.0, 1.0)
    big = Candidate("b", ((0,), (0, 0), (0, 1), (0, 2), (1,), (1, 0), (2,), (2, 0)), 2, 2.0, 1.0)
    middle = Candidate("c", ((0,), (0, 0), (0, 1), (1,)), 2, 1.5, 1.0)
    deeper = Candidate("d", ((0,), (0, 0), (0, 0, 0)), 3, 1.2, 1.0)
    # Self-rollout vs the superset's prediction on the same prompts and tokens: 0.9 and 0.7.
    rollouts = [{"paths": [list(p) for p in small.paths], "accept": 0.45, "biased": 0.5},
                {"paths": [list(p) for p in big.paths], "accept": 1.4, "biased": 2.0}]
    corrected = corrections_from(rollouts)
    assert corrected(small) == pytest.approx(0.9) and corrected(big) == pytest.approx(1.4)
    assert corrected(middle) == pytest.approx(1.5 * 0.8)            # halfway in log(nodes) between 2 and 8
    # No depth-3 grid tree: depth 2's ratios, at log(3 nodes).
    assert corrected(deeper) == pytest.approx(1.2 * (0.9 - 0.2 * math.log(1.5) / math.log(4)))
    assert corrections_from([])(middle) == 1.5                       # nothing rolled out: the biased length


def test_monotone_curve_irons_out_a_slow_spell():
    noisy = [{"nodes": 0, "depth": 0, "ms": 81.8}, {"nodes": 1, "depth": 1, "ms": 50.0},
             {"nodes": 2, "depth": 1, "ms": 99.0}, {"nodes": 3, "depth": 1, "ms": 53.0},
             {"nodes": 4, "depth": 1, "ms": 70.0}, {"nodes": 0, "depth": 0, "peek": True, "ms": 60.0}]
    fitted = monotone_curve(noisy)
    assert [p["ms"] for p in fitted] == [50.0, 50.0, 74.0, 74.0, 74.0, 60.0]
    assert step_ms(fitted, 3, 1) == pytest.approx(74.0)


def test_source_from_a_calibration_round_trips_and_is_checked():
    source = build_source(synthetic_calibration(), "synthetic", max_nodes=20, log=lambda _: None)
    check_source(json.loads(json.dumps(source)), "source")
    document = derive_bank(source, curve(30.0, 4.0))
    assert bank_from_document(document, "derived").trees
    for broken, message in ((dict(source, max_nodes=0), "max_nodes must be"),
                            (dict(source, rollouts=[{"name": "x", "paths": [[9, 9]], "accept": 1.0, "biased": 1.0}]),
                             r"rollout 'x': .*needs its prefix \[9\]"),
                            (dict(source, rollouts=[{"name": "x", "paths": [[9]], "accept": 1.0, "biased": 1.0}]),
                             "rollout 'x' must be a non-empty subtree of the superset"),
                            (dict(source, rollouts=[{"name": "x", "paths": [[0]], "accept": 2.0, "biased": 1.0}]),
                             "accept must be a finite number >= 0 and <= 1"),
                            (dict(source, steps=dict(source["steps"], probe=[1.0])), "one value per step"),
                            (dict(source, extra=1), "unknown key")):
        with pytest.raises(EntmtpError, match=message):
            check_source(json.loads(json.dumps(broken)), "source")
    with pytest.raises(EntmtpError, match="machine-free bank source"):
        bank_from_document(source, "source")


# --------------------------------------------------------------------------- the command line

def test_trees_show_derives_a_source_on_a_given_curve(capsys, tmp_path):
    name = "smollm2-135m-instruct-hydra-humaneval"
    flat = curve_file(tmp_path / "flat.json", FLAT)
    code, out, err = _run(capsys, "trees", "show", name, "--cost-curve", str(flat), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["format"] == "entmtp-bank/1" and document["cost"]["origin"] == f"file {flat}"
    assert max(t["nodes"] for t in document["trees"]) >= 16
    code, out, err = _run(capsys, "trees", "show", name, "--cost-curve", str(flat))
    assert code == 0, err
    assert f"costcurve(file{flat})" in "".join(out.split()) and "static-best" in out   # rich wraps long lines
    code, steep_out, err = _run(capsys, "trees", "show", name, "--cost-curve",
                                str(curve_file(tmp_path / "steep.json", STEEP)), "--json")
    assert code == 0, err
    steep = json.loads(steep_out)
    assert max(t["nodes"] for t in steep["trees"]) < max(t["nodes"] for t in document["trees"])
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(document))
    code, out, err = _run(capsys, "trees", "list")
    assert code == 0 and "bank source (hydra heads, task humaneval" in out
    # A pinned (derived) bank is a bank: a curve does not go with it.
    code, _, err = _run(capsys, "trees", "show", str(pinned), "--cost-curve", str(flat))
    assert code == 2
    _one_error_line(err, "already built on its own cost curve")


def test_trees_candidates_writes_the_best_static_trees(capsys, tmp_path):
    from entmtp.trees.files import load_tree

    steep = curve_file(tmp_path / "steep.json", STEEP)
    out = tmp_path / "cand"
    code, stdout, err = _run(capsys, "trees", "candidates", "smollm2-135m-instruct-medusa-gsm8k", "--top", "3",
                             "--cost-curve", str(steep), "--out", str(out))
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.startswith("  ")]
    rates = [float(line.split("\t")[-1].split()[0]) for line in lines]
    assert len(lines) == 3 and rates == sorted(rates, reverse=True)
    files = sorted(out.glob("*.json"))
    assert len(files) == 3 and all(load_tree(str(f)).name == f.stem for f in files)
    code, _, err = _run(capsys, "trees", "candidates", "smollm2-135m-instruct-medusa-gsm8k", "--top", "0")
    assert code == 2
    _one_error_line(err, "--top must be >= 1")
    # --min-nodes: the best trees that really speculate (the bench goal of 8+ node trees).
    code, stdout, err = _run(capsys, "trees", "candidates", "smollm2-135m-instruct-medusa-gsm8k", "--top", "4",
                             "--min-nodes", "8", "--cost-curve", str(steep))
    assert code == 0, err
    nodes = [int(line.split("\t")[1].split()[0]) for line in stdout.splitlines() if line.startswith("  ")]
    assert len(nodes) == 4 and min(nodes) >= 8 and "with 8+ nodes" in stdout
    for bad, message in (("-1", "--min-nodes must be >= 0"), ("100000", "no candidate of")):
        code, _, err = _run(capsys, "trees", "candidates", "smollm2-135m-instruct-medusa-gsm8k", "--min-nodes", bad,
                            "--cost-curve", str(steep))
        assert code == 2
        _one_error_line(err, message)


def test_cost_curve_bad_input(capsys, tmp_path, default_model_dir):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "entmtp-cost-curve/1", "facts": {}, "key": {}, "date": "d",
                               "curve": [{"nodes": 1, "depth": 1, "ms": -3}]}))
    prompt = ["--model", str(default_model_dir), "-p", "Hi.", "--max-new-tokens", "2"]
    code, _, err = _run(capsys, "run", "--method", "entmtp", "--cost-curve", str(bad), *prompt)
    assert code == 1
    _one_error_line(err, "curve point ms must be a positive number")
    code, _, err = _run(capsys, "run", "--method", "hydra", "--cost-curve", str(bad), *prompt)
    assert code == 2
    _one_error_line(err, "--cost-curve goes with --method entmtp, not --method hydra")
    code, _, err = _run(capsys, "trees", "show", "smollm2-135m-instruct-hydra-gsm8k", "--cost-curve",
                        str(tmp_path / "missing.json"))
    assert code == 1
    _one_error_line(err, "does not exist")
    code, _, err = _run(capsys, "cost", "measure", "--budget", "0")
    assert code == 2
    _one_error_line(err, "--budget must be a positive number")


def test_curves_with_repeated_or_sparse_points_price_every_tree(tmp_path):
    """Repeated (nodes, depth) points are averaged; below a depth's first point the cost
    runs from the root-only step; no tree is ever priced below root-only."""
    source = check_source(*read_bank_document("smollm2-135m-instruct-hydra-gsm8k"))
    points = [{"nodes": 0, "depth": 0, "ms": 20.0}, {"nodes": 8, "depth": 1, "ms": 25.0},
              {"nodes": 16, "depth": 1, "ms": 60.0}, {"nodes": 16, "depth": 1, "ms": 62.0},
              {"nodes": 12, "depth": 4, "ms": 40.0}, {"nodes": 12, "depth": 4, "ms": 40.0}]
    assert step_ms(points, 1, 1) == pytest.approx(20.625) and step_ms(points, 16, 1) == pytest.approx(61.0)
    bank = bank_from_document(derive_bank(source, points), "sparse")
    assert all(ms >= 20.0 for ms in bank.step_ms)


def test_a_damaged_pinned_bank_curve_is_one_error(tmp_path):
    document = derive_bank(check_source(*read_bank_document("smollm2-135m-instruct-hydra-gsm8k")), STEEP)
    document["cost_curve"] = [{"nodes": 0}]
    with pytest.raises(EntmtpError, match="cost-curve point depth must be an integer"):
        bank_from_document(document, "pinned")


USAGE = [
    (("cost", "measure", "--bank", "smollm2-135m-instruct-hydra-gsm8k", "--head-kind", "medusa"),
     "--head-kind picks a shipped bank source; with --bank the bank says"),
    (("bench", "--methods", "ar,hydra", "--cost-curve", "x.json", "--limit", "1"),
     "--cost-curve goes with bank methods"),
    (("trees", "build", "--calibration", "c.json", "--rollout-prompts", "0", "--rollout-tokens", "9"),
     "--rollout-tokens is only used by the self-rollouts"),
    (("trees", "build", "--calibration", "c.json", "--name", "a" * 120), "--name"),
    (("trees", "show", "tree8", "--dtype", "fp32"), "--dtype goes with a bank; 'tree8' is a tree"),
    (("trees", "show", "smollm2-135m-instruct-hydra-gsm8k", "--cost-curve", "x.json", "--model", "m"),
     "--model does not go with --cost-curve (they choose this machine's curve instead)"),
    (("cost", "measure", "--draft-vocab", "lots"), "--draft-vocab must be off, heads or a number of tokens"),
    (("trees", "candidates", "smollm2-135m-instruct-hydra-gsm8k", "--draft-vocab", "0"),
     "--draft-vocab must be off, heads or a number of tokens"),
    (("trees", "candidates", "smollm2-135m-instruct-hydra-gsm8k", "--cost-curve", "x.json", "--draft-vocab", "heads"),
     "--draft-vocab does not go with --cost-curve"),
]


@pytest.mark.parametrize("args,needle", USAGE, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in USAGE])
def test_cost_options_are_usage_mistakes_before_anything_loads(capsys, args, needle):
    code, _, err = _run(capsys, *args)
    assert code == 2, err
    _one_error_line(err, needle)


def test_cost_curve_with_a_built_bank_is_refused_before_the_model_loads(capsys, tmp_path):
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(derive_bank(check_source(*read_bank_document("smollm2-135m-instruct-hydra-gsm8k")),
                                             STEEP)))
    steep = curve_file(tmp_path / "steep.json", STEEP)
    code, _, err = _run(capsys, "run", "--model", "/nonexistent/model", "--method", "entmtp", "--bank", str(pinned),
                        "--cost-curve", str(steep), "-p", "Hi.")
    assert code == 2
    _one_error_line(err, "this --bank is already built on its own cost curve")


def test_a_calibration_without_prompt_indices_is_one_error(capsys, tmp_path):
    calibration = synthetic_calibration()
    del calibration["steps"]["prompt"]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration))
    code, _, err = _run(capsys, "trees", "build", "--calibration", str(path), "--rollout-prompts", "0",
                        "--out", str(tmp_path / "src.json"))
    assert code == 1
    _one_error_line(err, "'steps.prompt' must be a list with one value per step")


def test_resume_refuses_banks_derived_on_another_curve(tmp_path):
    from entmtp.bench.config import BenchConfig
    from entmtp.bench.run import _check_same_banks
    from entmtp.errors import UsageError

    same = {"entmtp": {"gsm8k": {"trees": [{"name": "n0"}, {"name": "n3d1"}]}}}
    (tmp_path / "banks.json").write_text(json.dumps(same))
    _check_same_banks(BenchConfig(tasks=("gsm8k",), methods=("entmtp",), out=tmp_path, resume=True), same)
    other = {"entmtp": {"gsm8k": {"trees": [{"name": "n12d4"}]}}}
    _check_same_banks(BenchConfig(tasks=("gsm8k",), methods=("entmtp",), out=tmp_path), other)   # not resuming
    with pytest.raises(UsageError, match="now derives trees n12d4, but the results .* were measured with n0, n3d1"):
        _check_same_banks(BenchConfig(tasks=("gsm8k",), methods=("entmtp",), out=tmp_path, resume=True), other)


def test_a_curve_from_another_machine_warns_and_says_which(capsys, tmp_path, default_model_dir):
    other = curve_file(tmp_path / "zen1.json", STEEP, cpu_class="avx2", threads=16)
    code, out, err = _run(capsys, "run", "--model", str(default_model_dir), "--method", "entmtp", "-p", "Hi.",
                          "--max-new-tokens", "4", "--cost-curve", str(other), "--dtype", "fp32")
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "cpu_class avx2 there" in warning[0] and "threads 16 there" in warning[0]


def test_flat_curve_banks_are_still_token_identical_to_ar(capsys, tmp_path, default_model_dir):
    """A flat curve makes big trees (tens of nodes) bank members: still exact in fp32."""
    flat = curve_file(tmp_path / "flat.json", FLAT)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ("Write a Python function that reverses a string.", "List three prime numbers.")))
    common = ["--model", str(default_model_dir), "--prompt-file", str(prompts), "--max-new-tokens", "32",
              "--dtype", "fp32", "--json"]
    code, out, err = _run(capsys, "run", *common)
    assert code == 0, err
    reference = [json.loads(line)["token_ids"] for line in out.splitlines()]
    for extra in ([], ["--scheduler", "static-best"], ["--head-kind", "medusa", "--scheduler", "oracle"]):
        code, out, err = _run(capsys, "run", "--method", "entmtp", "--cost-curve", str(flat), "--trace",
                              *extra, *common)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["token_ids"] for r in records] == reference, extra
        used = {step["tree"] for r in records for step in r["trace"]}
        assert any(int(m.group(1)) >= 16 for m in map(re.compile(r"n(\d+)d").match, used) if m), used


# --------------------------------------------------------------------------- measuring and caching

@pytest.fixture
def own_machine(monkeypatch, tmp_path):
    """No committed curve: this machine's is measured (quickly) into a fresh cache."""
    import entmtp.tune.machine_cost as machine_cost

    monkeypatch.delenv("ENTMTP_COST_CURVE", raising=False)
    monkeypatch.setattr(machine_cost, "MEASURE_BUDGET_S", 1.0)   # three rounds: seconds, not a minute
    monkeypatch.setattr(machine_cost, "cache_root", lambda: tmp_path / "home")
    return machine_cost


def test_curve_is_measured_once_cached_and_remeasured_when_corrupt(own_machine, default_model_dir):
    from entmtp.heads.shipped import load_model_heads
    from entmtp.model.loader import load_model

    loaded = load_model(str(default_model_dir), torch.bfloat16)
    heads = load_model_heads(loaded, "medusa", None)
    source = check_source(*read_bank_document("smollm2-135m-instruct-medusa-gsm8k"))
    said: list[str] = []
    curve_points, described = own_machine.curve_for_bank(loaded, heads, source, top_k=10, log=said.append)
    assert described["origin"] == "measured now" and len(said) == 1 and "measuring this machine's step cost" in said[0]
    cache = own_machine.cache_file("cpu")
    assert cache.is_file() and described["fingerprint"] in cache.name
    assert all(p["ms"] > 0 for p in curve_points) and any(p["nodes"] >= 32 for p in curve_points)
    said.clear()
    again, described = own_machine.curve_for_bank(loaded, heads, source, top_k=10, log=said.append)
    assert again == curve_points and described["origin"] == "cache" and said == []
    # Other heads are another key: measured on their own.
    assert own_machine.cached_curve(own_machine.cost_key(loaded, load_model_heads(loaded, "hydra", None), None)) is None
    cache.write_text("{ torn")
    said.clear()
    _, described = own_machine.curve_for_bank(loaded, heads, source, top_k=10, log=said.append)
    assert described["origin"] == "measured now"
    assert any("warning" in m and "measuring again" in m for m in said)
    assert json.loads(cache.read_text())["format"] == "entmtp-cost-cache/1"


def test_a_lower_kernel_path_is_another_machine(tmp_path, default_model_dir):
    """Forcing a lower kernel path (ENTMTP_ISA) changes the fingerprint: its curve is
    measured and cached apart from this path's, and derives its own bank."""
    from entmtp import machine

    here = machine.cpu_class()
    if here == "portable":
        pytest.skip("this CPU runs the portable kernel path already: there is no lower one to force")
    lower = "avx2" if here in ("amx", "avx512bf16", "avx512") else "portable"
    env = {k: v for k, v in os.environ.items() if k != "ENTMTP_COST_CURVE"}
    env.update(ENTMTP_ISA=lower, ENTMTP_HOME=str(tmp_path / "home"))
    out = tmp_path / "lower.json"
    done = subprocess.run([sys.executable, "-m", "cli.main", "cost", "measure", "--model", str(default_model_dir),
                           "--head-kind", "medusa", "--task", "gsm8k", "--budget", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["facts"]["cpu_class"] == lower and document["fingerprint"] != machine.fingerprint("cpu")
    assert (tmp_path / "home" / "cost-curves" / f"{document['fingerprint']}.json").is_file()
    source = check_source(*read_bank_document("smollm2-135m-instruct-medusa-gsm8k"))
    bank = bank_from_document(derive_bank(source, document["curve"]), "lower")
    assert bank.trees and all(ms > 0 for ms in bank.step_ms)


def test_a_curve_drafting_over_the_shortlist_is_measured_and_found_apart(capsys, tmp_path, default_model_dir):
    """`cost measure --draft-vocab heads` times the steps drafting over the heads' shortlist and
    caches that curve under its own key; `trees candidates --draft-vocab heads` then ranks on it."""
    out = tmp_path / "dv.json"
    code, _, err = _run(capsys, "cost", "measure", "--model", str(default_model_dir), "--task", "gsm8k",
                        "--draft-vocab", "heads", "--budget", "1", "--out", str(out))
    assert code == 0, err
    assert "drafting over 13312 tokens" in err
    document = json.loads(out.read_text())
    assert document["key"]["draft_vocab"] == 13312 and all(p["ms"] > 0 for p in document["curve"])
    code, listed, err = _run(capsys, "cost", "list")
    assert code == 0, err
    assert "dv13312" in listed
    code, shown, err = _run(capsys, "trees", "candidates", "smollm2-135m-instruct-hydra-gsm8k", "--model",
                            str(default_model_dir), "--draft-vocab", "heads", "--top", "1")
    assert code == 0, err
    assert "on the cost curve of cache" in shown and "measuring" not in err
