"""Tree banks: a task's Pareto-optimal trees, their calibration tables and cost.

Built by `entmtp trees build` (entmtp.tune.build) from a calibration file. A bank
file (`entmtp-bank/1`) is validated into a frozen `Bank`; `bank_policy` turns it
into a scheduler (entmtp.schedule.policies), and `check_bank_provenance` refuses a
bank built for another model or other heads.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from entmtp.errors import EntmtpError, UsageError
from entmtp.jsonfile import parse_json, read_text
from entmtp.schedule.policies import BinnedPolicy, JointPolicy, OraclePolicy, PeekPolicy, StaticPolicy, TreePolicy
from entmtp.schedule.signals import SIGNALS
from entmtp.schedule.spec import RATE_SIGNALS, SCHEDULERS, SchedulerSpec
from entmtp.trees.growth import path_key
from entmtp.trees.tree import SHIPPED_TREES_PACKAGE, Tree, tree_from_paths

BANK_FORMAT = "entmtp-bank/1"
# Calibration tables are binned by every signal known before the step, and by "now"
# (head 0's top-1 probability at this step's root, read after head 0 runs: PeekPolicy).
TABLE_SIGNALS = SIGNALS + ("now",)
RECOMMENDED = SchedulerSpec("rate", "now")   # what a bank recommends until its replay picks one
MIN_BIN_STEPS = 30                     # fewer calibration steps: fall back to the overall table
_BANK_KEYS = {"format", "name", "provenance", "window", "trees", "static_best", "hulls", "signals",
              "tables", "ladder", "cost_curve", "peek_ms", "probe", "recommended", "calibration_rates"}
_TREE_KEYS = {"name", "paths", "nodes", "depth", "accept_biased", "accept_self_rollout", "step_ms",
              "predicted_tokens_per_second"}


def expected_accepted(tree_paths: Sequence[tuple[int, ...]], table: dict, correction: float) -> float:
    """A tree's expected accepted length under one calibration table: the sum of its
    nodes' acceptance probabilities, scaled by its self-rollout correction."""
    p = table["p"]
    return correction * sum(p.get(path_key(path), 0.0) for path in tree_paths)


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Probe:
    """The bank's linear probe (entmtp.tune.probe): accepted length ~ weights . [h, 1]."""
    weights: Optional[tuple[float, ...]]   # [hidden + 1], checked when a policy uses it
    lam: Optional[float] = None            # the ridge penalty chosen at calibration
    out_of_fold_r: Optional[float] = None  # Pearson r of its out-of-fold predictions
    target: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Bank:
    name: str
    trees: tuple[Tree, ...]               # sorted by nodes; buffers are built by the decoder, once
    step_ms: tuple[float, ...]            # calibrated ms per step (the cost curve at the tree's size)
    accept: tuple[float, ...]             # self-rollout accepted length (biased when not rolled out)
    accept_biased: tuple[float, ...]      # predicted from the superset rollout
    correction: tuple[float, ...]         # accept / biased accept: scales the calibration tables
    static_best: int
    ladder: tuple[tuple[int, ...], tuple[float, ...]]   # (tree indices, entropy thresholds)
    window: float
    peek_ms: float
    probe: Probe
    recommended: SchedulerSpec            # what `--method entmtp` runs (picked by replay at build)
    edges: Mapping[str, Any]              # signal -> bin edges; "joint" -> {entropy, accept}
    tables: Mapping[str, Any]             # "overall" / signal -> [{steps, p: {path key: prob}}]
    provenance: Mapping[str, Any]         # model, heads, task, prompt ids, dtype, device, dates
    hulls: Mapping[str, tuple[tuple[int, int, float], ...]]   # "accept" / "throughput" -> (nodes, depth, value)
    calibration_rates: Mapping[str, float]                   # scheduler -> modeled tok/s on calibration steps
    cost_curve: tuple[Mapping[str, Any], ...]

    def index(self, tree_name: str) -> int:
        for i, tree in enumerate(self.trees):
            if tree.name == tree_name:
                return i
        raise EntmtpError(f"bank {self.name!r} has no tree {tree_name!r}; "
                          f"its trees: {', '.join(t.name for t in self.trees)}")

    def expected_accept(self, table: dict) -> list[float]:
        return [expected_accepted(t.paths, table, c) for t, c in zip(self.trees, self.correction)]


def bank_from_document(document: Any, where: str) -> Bank:
    if not isinstance(document, dict):
        raise EntmtpError(f"{where}: the top level must be a JSON object")
    if document.get("format") != BANK_FORMAT:
        raise EntmtpError(f"{where}: format is {document.get('format')!r}, expected {BANK_FORMAT!r}")
    unknown = sorted(set(document) - _BANK_KEYS)
    if unknown:
        raise EntmtpError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(_BANK_KEYS - set(document))
    if missing:
        raise EntmtpError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    entries = document["trees"]
    if not isinstance(entries, list) or not entries:
        raise EntmtpError(f"{where}: 'trees' must be a non-empty list")
    trees, ms, accept, biased_accept, correction = [], [], [], [], []
    for entry in entries:
        if not isinstance(entry, dict):
            raise EntmtpError(f"{where}: every tree must be an object")
        extra = sorted(set(entry) - _TREE_KEYS)
        if extra:
            raise EntmtpError(f"{where}: tree {entry.get('name')!r} has unknown key(s) {', '.join(map(repr, extra))}")
        tree_name = entry.get("name")
        try:
            tree = tree_from_paths(tree_name, entry.get("paths"))
        except EntmtpError as error:
            raise EntmtpError(f"{where}: invalid tree: {error}") from None
        cost = entry.get("step_ms")
        if not isinstance(cost, (int, float)) or cost <= 0:
            raise EntmtpError(f"{where}: tree {tree_name!r} needs a positive step_ms, got {cost!r}")
        biased = float(entry.get("accept_biased") or 0.0)
        true = entry.get("accept_self_rollout")
        trees.append(tree)
        ms.append(float(cost))
        accept.append(float(true) if true is not None else biased)
        biased_accept.append(biased)
        correction.append(float(true) / biased if true is not None and biased > 0 else 1.0)
    names = [t.name for t in trees]
    if len(set(names)) != len(names):
        raise EntmtpError(f"{where}: tree names must be unique")
    if document["static_best"] not in names:
        raise EntmtpError(f"{where}: static_best {document['static_best']!r} is not one of its trees")
    ladder = document["ladder"]
    thresholds = ladder.get("thresholds", []) if isinstance(ladder, dict) else None
    if not isinstance(thresholds, list) or not all(isinstance(t, (int, float)) for t in thresholds):
        raise EntmtpError(f"{where}: ladder thresholds must be a list of numbers")
    if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
        raise EntmtpError(f"{where}: ladder thresholds must be strictly increasing, got {thresholds}")
    ladder_trees = ladder.get("trees", [])
    if len(ladder_trees) != len(thresholds) + 1:
        raise EntmtpError(f"{where}: the ladder has {len(thresholds)} thresholds, so it needs "
                          f"{len(thresholds) + 1} trees, not {len(ladder_trees)}")
    for tree_name in ladder_trees:
        if tree_name not in names:
            raise EntmtpError(f"{where}: ladder tree {tree_name!r} is not one of its trees")
    window = document["window"]
    if not isinstance(window, (int, float)) or window < 1:
        raise EntmtpError(f"{where}: window must be a number >= 1, got {window!r}")
    edges = document["signals"]
    for signal in TABLE_SIGNALS:
        values = edges.get(signal) if isinstance(edges, dict) else None
        if not isinstance(values, list) or any(b <= a for a, b in zip(values, values[1:])):
            raise EntmtpError(f"{where}: signal bin edges for {signal!r} must be a strictly increasing list")
    return Bank(name=str(document["name"]), trees=tuple(trees), step_ms=tuple(ms), accept=tuple(accept),
                accept_biased=tuple(biased_accept), correction=tuple(correction),
                static_best=names.index(document["static_best"]),
                ladder=(tuple(names.index(n) for n in ladder_trees), tuple(float(t) for t in thresholds)),
                window=float(window), peek_ms=float(document["peek_ms"]), probe=_probe(document["probe"]),
                recommended=_recommended(document["recommended"], where), edges=edges, tables=document["tables"],
                provenance=document["provenance"],
                hulls={k: tuple((int(n), int(d), float(v)) for n, d, v in points)
                       for k, points in document["hulls"].items()},
                calibration_rates={k: float(v) for k, v in (document["calibration_rates"] or {}).items()},
                cost_curve=tuple(document["cost_curve"]))


def _probe(value: Any) -> Probe:
    if not isinstance(value, dict):
        return Probe(None)
    weights = value.get("weights")
    return Probe(weights=tuple(float(w) for w in weights) if isinstance(weights, list) else None,
                 lam=value.get("lambda"), out_of_fold_r=value.get("out_of_fold_r"), target=value.get("target"))


def _recommended(value: Any, where: str) -> SchedulerSpec:
    if not isinstance(value, dict) or value.get("scheduler") not in SCHEDULERS or value.get("scheduler") == "oracle":
        raise EntmtpError(f"{where}: 'recommended' must name a scheduler ({', '.join(SCHEDULERS[:4])})")
    signal = value.get("signal")
    if signal is not None and signal not in RATE_SIGNALS:
        raise EntmtpError(f"{where}: recommended signal {signal!r} is not one of {', '.join(RATE_SIGNALS)}")
    try:
        return SchedulerSpec(value["scheduler"], signal)
    except UsageError as error:
        raise EntmtpError(f"{where}: 'recommended': {error}") from None


def bank_dir() -> Any:
    return importlib.resources.files(SHIPPED_TREES_PACKAGE).joinpath("banks")


def list_banks() -> list[str]:
    folder = bank_dir()
    if not folder.is_dir():
        return []
    return sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".json"))


def shipped_bank_name(model_name: str, heads_kind: str, task: str) -> str:
    return f"{model_name}-{heads_kind}-{task}"


def load_bank(name_or_path: str | os.PathLike) -> Bank:
    text = os.fspath(name_or_path)
    if text.endswith(".json") or os.sep in text:
        where = f"bank file {text!r}"
        raw = read_text(Path(text), where)
    else:
        names = list_banks()
        if text not in names:
            raise EntmtpError(f"unknown bank {text!r}; shipped banks: {', '.join(names) or '(none)'} "
                              "(or pass a path to a .json file)")
        where = f"shipped bank {text!r}"
        raw = bank_dir().joinpath(text + ".json").read_text(encoding="utf-8")
    return bank_from_document(parse_json(raw, where), where)


def check_bank_provenance(bank: Bank, model: dict, heads_fingerprint: str, heads_kind: str) -> None:
    """A bank is calibrated for one model and one set of heads: refuse others."""
    built_model = bank.provenance.get("model", {})
    for key, value in model.items():
        if built_model.get(key) != value:
            raise EntmtpError(f"bank {bank.name!r} was built for model {built_model.get('name')!r} "
                              f"({key}={built_model.get(key)!r}), not {model.get('name')!r} ({key}={value!r})")
    heads = bank.provenance.get("heads", {})
    if heads.get("kind") != heads_kind:
        raise EntmtpError(f"bank {bank.name!r} was built for {heads.get('kind')} heads, not {heads_kind}")
    if heads.get("fingerprint") != heads_fingerprint:
        raise EntmtpError(f"bank {bank.name!r} was calibrated with other {heads_kind} heads "
                          f"(fingerprint {heads.get('fingerprint')} != {heads_fingerprint}); "
                          "rebuild it with entmtp calibrate and entmtp trees build")


# --------------------------------------------------------------------------- #
# Policies from a bank
# --------------------------------------------------------------------------- #


def _rate_choice(bank: Bank, table: dict, allow_root_only: bool, fallback: dict, extra_root_ms: float = 0.0) -> int:
    if table["steps"] < MIN_BIN_STEPS:
        table = fallback
    expected = bank.expected_accept(table)
    options = [i for i, t in enumerate(bank.trees) if allow_root_only or t.n_nodes > 1] or [bank.static_best]
    return max(options, key=lambda i: (expected[i] + 1.0)
               / (bank.step_ms[i] + (extra_root_ms if bank.trees[i].n_nodes == 1 else 0.0)))


def bank_policy(bank: Bank, scheduler: str, signal: str = "entropy", tree: Optional[str] = None) -> TreePolicy:
    """The scheduler over a bank. Every policy carries the bank's probe, so each
    step records the probe value for `bench --analysis`, used or not (a dot product)."""
    policy = _bank_policy(bank, scheduler, signal, tree)
    policy.probe = bank_probe_weights(bank)
    return policy


def _bank_policy(bank: Bank, scheduler: str, signal: str, tree: Optional[str]) -> TreePolicy:
    ms = bank.step_ms
    if scheduler == "static-best":
        i = bank.static_best
        return StaticPolicy(bank.trees[i], ms[i], name="static-best")
    if scheduler == "static":
        if tree is None:
            raise UsageError("--scheduler static needs --tree NAME (one of the bank's trees)")
        i = bank.index(tree)
        return StaticPolicy(bank.trees[i], ms[i], name="static")
    if scheduler == "oracle":
        union = tree_from_paths("union", sorted({p for t in bank.trees for p in t.paths}))
        return OraclePolicy(bank.trees, ms, union)
    if scheduler == "entropy":
        indices, thresholds = bank.ladder
        trees = [bank.trees[i] for i in indices]
        return BinnedPolicy("entropy", trees, [ms[i] for i in indices], "entropy", thresholds,
                            list(range(len(trees))), unseen=0)
    if scheduler != "rate":
        raise UsageError(f"unknown scheduler {scheduler!r}; available: {', '.join(SCHEDULERS)}")
    if signal not in RATE_SIGNALS:
        raise UsageError(f"unknown signal {signal!r}; available: {', '.join(RATE_SIGNALS)}")
    overall = bank.tables["overall"]
    if signal == "now":
        # Always peek: head 0 runs at the root, then the bin of its top-1 probability
        # picks the tree; root-only then costs the peek too.
        now_choice = [_rate_choice(bank, t, True, overall, bank.peek_ms) for t in bank.tables["now"]]
        policy = PeekPolicy("rate", bank.trees, ms, bank.edges["now"], now_choice)
        policy.peek_ms = bank.peek_ms
        return policy
    if signal == "all":
        joint_edges = bank.edges["joint"]
        choice = [[_rate_choice(bank, cell, True, bank.tables["entropy"][min(e, len(bank.tables["entropy"]) - 1)])
                   for cell in row] for e, row in enumerate(bank.tables["joint"])]
        entropy_only = [_rate_choice(bank, t, True, overall)
                        for t in _rebin(bank, joint_edges["entropy"])]
        return JointPolicy("rate", bank.trees, ms, joint_edges, choice, entropy_only, unseen=bank.static_best)
    # accept and confidence are observed only on drafting steps: never park on root-only with them.
    allow_root_only = signal in ("entropy", "probe")
    choices = [_rate_choice(bank, t, allow_root_only, overall) for t in bank.tables[signal]]
    return BinnedPolicy("rate", bank.trees, ms, signal, bank.edges[signal], choices,
                        unseen=_rate_choice(bank, overall, allow_root_only, overall))


def bank_probe_weights(bank: Bank):
    import torch

    weights = bank.probe.weights
    hidden = bank.provenance.get("model", {}).get("hidden_size")
    if weights is None or len(weights) != (hidden or 0) + 1:
        raise EntmtpError(f"bank {bank.name!r}: probe weights must be {hidden} + 1 numbers")
    return torch.tensor(weights, dtype=torch.float32)


def _rebin(bank: Bank, edges: Sequence[float]) -> list[dict]:
    """Joint-table rows summed over the accept bins: entropy-only tables on the joint edges."""
    rows = []
    for row in bank.tables["joint"]:
        steps = sum(cell["steps"] for cell in row)
        p: dict[str, float] = {}
        for cell in row:
            for key, value in cell["p"].items():
                p[key] = p.get(key, 0.0) + value * cell["steps"]
        rows.append({"steps": steps, "p": {k: v / steps for k, v in p.items()} if steps else {}})
    return rows
