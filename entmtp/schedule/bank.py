"""Tree banks: a task's Pareto-optimal trees, their calibration tables and cost.

Built by `entmtp trees build` (entmtp.tune.build) from a calibration file. A bank
file (`entmtp-bank/1`) is validated into a frozen `Bank`; `bank_policy` turns it
into a scheduler (entmtp.schedule.policies), and `check_bank_provenance` refuses a
bank built for another model or other heads.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from entmtp.errors import EntmtpError, UsageError
from entmtp.schedule.cost import check_points
from entmtp.schedule.policies import BinnedPolicy, JointPolicy, OraclePolicy, PeekPolicy, StaticPolicy, TreePolicy
from entmtp.schedule.signals import SIGNALS
from entmtp.schedule.spec import RATE_SIGNALS, SCHEDULERS, SchedulerSpec
from entmtp.trees.files import parse_document, read_document
from entmtp.trees.growth import path_key
from entmtp.trees.tree import MAX_DEPTH, MAX_RANK, SHIPPED_TREES_PACKAGE, Tree, check_name, short_repr, tree_from_paths

BANK_FORMAT = "entmtp-bank/1"
SOURCE_FORMAT = "entmtp-bank-source/1"   # entmtp.tune.source: a bank without its machine's cost
# Calibration tables are binned by every signal known before the step, and by "now"
# (head 0's top-1 probability at this step's root, read after head 0 runs: PeekPolicy).
TABLE_SIGNALS = SIGNALS + ("now",)
RECOMMENDED = SchedulerSpec("rate", "now")   # what a bank recommends until its replay picks one
MIN_BIN_STEPS = 30                     # fewer calibration steps: fall back to the overall table
_BANK_KEYS = {"format", "name", "provenance", "window", "trees", "static_best", "hulls", "signals",
              "tables", "ladder", "cost_curve", "peek_ms", "probe", "recommended", "calibration_rates"}
# Optional: what the cost curve is (machine facts, date, origin), in a bank derived at
# load from a machine-free source (entmtp.tune.source) for this machine.
_OPTIONAL_BANK_KEYS = {"cost"}
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
    cost: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # the curve's machine, date, origin

    def index(self, tree_name: str) -> int:
        for i, tree in enumerate(self.trees):
            if tree.name == tree_name:
                return i
        # The name comes from --tree: a usage mistake (exit 2).
        raise UsageError(f"bank {self.name!r} has no tree {short_repr(tree_name)}; "
                         f"its trees: {', '.join(t.name for t in self.trees)}")

    def expected_accept(self, table: dict) -> list[float]:
        return [expected_accepted(t.paths, table, c) for t, c in zip(self.trees, self.correction)]


# Bounds beyond one tree's (entmtp.trees.tree): the decoder builds every tree's buffers up
# front (`trees build` makes 6 trees); signals are calibrated with 5 bins; the EMA's beta =
# 1 - 1/window rounds to 1, and its bias correction divides by zero, long before 1e15.
MAX_BANK_TREES, MAX_BINS, MAX_WINDOW = 32, 64, 1e6


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, nan, inf, 10**400, "1")."""
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    return number if math.isfinite(number) else None


def checked_number(value: Any, what: str, low: float = 0.0, high: float = math.inf) -> float:
    number = _finite(value)
    if number is None or not low <= number <= high:
        bounds = ([f">= {low:g}"] if low > -math.inf else []) + ([f"<= {high:g}"] if high < math.inf else [])
        raise EntmtpError(f"{what} must be a finite number {' and '.join(bounds)}".rstrip()
                          + f", not {short_repr(value)}")
    return number


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EntmtpError(f"{what} must be an integer from {low} to {high}, not {short_repr(value)}")
    return value


def checked_object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise EntmtpError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _edges(value: Any, what: str) -> list[float]:
    """Bin edges: a strictly increasing list of at most MAX_BINS finite numbers."""
    if not isinstance(value, list) or len(value) > MAX_BINS:
        raise EntmtpError(f"{what} must be a list of at most {MAX_BINS} numbers")
    edges = [checked_number(v, what, -math.inf) for v in value]
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise EntmtpError(f"{what} must be strictly increasing, got {short_repr(edges)}")
    return edges


def _tables(value: Any, what: str, count: int) -> list:
    """`count` calibration tables, each {steps: int >= 0, p: {path key: probability}}."""
    if not isinstance(value, list) or len(value) != count:
        raise EntmtpError(f"{what} must be a list of {count} tables (one per bin), not {short_repr(value)}")
    for table in value:
        checked_object(table, what + " entries")
        _integer(table.get("steps"), what + " steps", 0, 2**53)
        for p in checked_object(table.get("p"), what + " 'p'").values():
            checked_number(p, what + " probabilities", 0.0, 1.0)
    return value


def checked_provenance(value: Any, where: str, trees: Sequence[Tree]) -> dict:
    """What the decoder, the provenance check and `trees show` read from the provenance."""
    provenance = checked_object(value, f"{where}: 'provenance'")
    model = checked_object(provenance.get("model", {}), f"{where}: provenance 'model'")
    heads = checked_object(provenance.get("heads", {}), f"{where}: provenance 'heads'")
    if model.get("hidden_size") is not None:
        _integer(model["hidden_size"], f"{where}: provenance model hidden_size", 1, 1 << 20)
    if not isinstance(heads.get("kind", ""), str):
        raise EntmtpError(f"{where}: provenance heads kind must be a string, not {short_repr(heads['kind'])}")
    if not isinstance(provenance.get("prompt_ids", []), list):
        raise EntmtpError(f"{where}: provenance prompt_ids must be a list")
    if "n_heads" in heads:
        _integer(heads["n_heads"], f"{where}: provenance heads n_heads", 1, MAX_DEPTH)
    if "top_k" in heads:
        top_k = _integer(heads["top_k"], f"{where}: provenance heads top_k", 1, MAX_RANK + 1)
        for tree in trees:
            if tree.top_k_needed > top_k:
                raise EntmtpError(f"{where}: tree {tree.name!r} uses rank {tree.top_k_needed - 1} "
                                  f"but the heads propose only the top {top_k}")
    return provenance


def check_keys(document: dict, required: set, optional: set, where: str) -> None:
    """No key outside `required` | `optional`, every required one, and a valid 'name'."""
    unknown = sorted(set(document) - required - optional)
    if unknown:
        raise EntmtpError(f"{where}: unknown key(s) {', '.join(map(short_repr, unknown[:8]))}")
    missing = sorted(required - set(document))
    if missing:
        raise EntmtpError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    check_name(document["name"], f"{where}: 'name'")


def bank_from_document(document: Any, where: str) -> Bank:
    if not isinstance(document, dict):
        raise EntmtpError(f"{where}: the top level must be a JSON object, not {type(document).__name__}")
    if document.get("format") == SOURCE_FORMAT:
        raise EntmtpError(f"{where} is a machine-free bank source: it becomes a bank on a machine's cost curve "
                          "(entmtp run and bench derive it; entmtp trees show NAME shows the result)")
    if document.get("format") != BANK_FORMAT:
        raise EntmtpError(f"{where}: format is {short_repr(document.get('format'))}, expected {BANK_FORMAT!r}")
    check_keys(document, _BANK_KEYS, _OPTIONAL_BANK_KEYS, where)
    entries = document["trees"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BANK_TREES:
        raise EntmtpError(f"{where}: 'trees' must be a list of 1 to {MAX_BANK_TREES} trees")
    trees, ms, accept, biased_accept, correction = [], [], [], [], []
    for entry in entries:
        if not isinstance(entry, dict):
            raise EntmtpError(f"{where}: every tree must be an object, not {type(entry).__name__}")
        extra = sorted(set(entry) - _TREE_KEYS)
        if extra:
            raise EntmtpError(f"{where}: tree {short_repr(entry.get('name'))} has unknown key(s) "
                              f"{', '.join(map(short_repr, extra[:8]))}")
        try:
            tree = tree_from_paths(entry.get("name"), entry.get("paths"))
        except EntmtpError as error:
            raise EntmtpError(f"{where}: invalid tree: {error}") from None
        what = f"{where}: tree {tree.name!r}"
        cost = _finite(entry.get("step_ms"))
        if cost is None or cost <= 0:
            raise EntmtpError(f"{what} needs a positive step_ms, got {short_repr(entry.get('step_ms'))}")
        # Accepted lengths are expected values: at most a tree's depth, so at most MAX_DEPTH.
        biased, true = (None if entry.get(key) is None else checked_number(entry[key], f"{what} {key}", 0.0, MAX_DEPTH)
                        for key in ("accept_biased", "accept_self_rollout"))
        biased = biased or 0.0
        trees.append(tree)
        ms.append(cost)
        accept.append(true if true is not None else biased)
        biased_accept.append(biased)
        correction.append(true / biased if true is not None and biased > 0 else 1.0)
    names = [t.name for t in trees]
    if len(set(names)) != len(names):
        raise EntmtpError(f"{where}: tree names must be unique")
    if not isinstance(document["static_best"], str) or document["static_best"] not in names:
        raise EntmtpError(f"{where}: static_best {short_repr(document['static_best'])} is not one of its trees")
    ladder = checked_object(document["ladder"], f"{where}: 'ladder'")
    thresholds = _edges(ladder.get("thresholds", []), f"{where}: ladder thresholds")
    ladder_trees = ladder.get("trees", [])
    if not isinstance(ladder_trees, list) or len(ladder_trees) != len(thresholds) + 1:
        raise EntmtpError(f"{where}: the ladder has {len(thresholds)} thresholds, so it needs "
                          f"{len(thresholds) + 1} trees, not {short_repr(ladder_trees)}")
    for tree_name in ladder_trees:
        if not isinstance(tree_name, str) or tree_name not in names:
            raise EntmtpError(f"{where}: ladder tree {short_repr(tree_name)} is not one of its trees")
    window = checked_number(document["window"], f"{where}: window", 1.0, MAX_WINDOW)
    edges = checked_object(document["signals"], f"{where}: 'signals'")
    tables = checked_object(document["tables"], f"{where}: 'tables'")
    _tables([tables.get("overall")], f"{where}: table 'overall'", 1)
    for signal in TABLE_SIGNALS:
        bins = _edges(edges.get(signal), f"{where}: signal bin edges for {signal!r}")
        _tables(tables.get(signal), f"{where}: tables for {signal!r}", len(bins) + 1)
    joint = checked_object(edges.get("joint"), f"{where}: signal bin edges for 'joint'")
    entropy_bins = _edges(joint.get("entropy"), f"{where}: joint bin edges for 'entropy'")
    accept_bins = _edges(joint.get("accept"), f"{where}: joint bin edges for 'accept'")
    rows = tables.get("joint")
    if not isinstance(rows, list) or len(rows) != len(entropy_bins) + 1:
        raise EntmtpError(f"{where}: the joint tables must be {len(entropy_bins) + 1} rows (one per entropy bin)")
    for row in rows:
        _tables(row, f"{where}: a joint table row", len(accept_bins) + 1)
    hulls = checked_object(document["hulls"], f"{where}: 'hulls'")
    for points in hulls.values():
        if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 3 for p in points):
            raise EntmtpError(f"{where}: every hull must be a list of [nodes, depth, value] points")
        for n, d, v in points:
            _integer(n, f"{where}: hull nodes", 0, 1 << 20)
            _integer(d, f"{where}: hull depth", 0, 1 << 20)
            checked_number(v, f"{where}: hull value", -math.inf)
    rates = checked_object({} if document["calibration_rates"] is None else document["calibration_rates"],
                    f"{where}: 'calibration_rates'")
    curve = document["cost_curve"]
    if not isinstance(curve, list) or not all(isinstance(point, dict) for point in curve):
        raise EntmtpError(f"{where}: 'cost_curve' must be a list of objects")
    check_points(curve, where)
    return Bank(name=document["name"], trees=tuple(trees), step_ms=tuple(ms), accept=tuple(accept),
                accept_biased=tuple(biased_accept), correction=tuple(correction),
                static_best=names.index(document["static_best"]),
                ladder=(tuple(names.index(n) for n in ladder_trees), tuple(thresholds)),
                window=window, peek_ms=checked_number(document["peek_ms"], f"{where}: peek_ms"),
                probe=checked_probe(document["probe"], where), recommended=_recommended(document["recommended"], where),
                edges=edges, tables=tables, provenance=checked_provenance(document["provenance"], where, trees),
                hulls={k: tuple((n, d, float(v)) for n, d, v in points) for k, points in hulls.items()},
                calibration_rates={k: checked_number(v, f"{where}: calibration rate {short_repr(k)}", -math.inf)
                                   for k, v in rates.items()},
                cost_curve=tuple(curve), cost=checked_object(document.get("cost", {}), f"{where}: 'cost'"))


def checked_probe(value: Any, where: str) -> Probe:
    value = checked_object(value, f"{where}: 'probe'")
    weights = value.get("weights")
    if weights is not None and not isinstance(weights, list):
        raise EntmtpError(f"{where}: probe weights must be a list of numbers or null")
    lam, r = (None if value.get(key) is None else checked_number(value[key], f"{where}: probe {key}", -math.inf)
              for key in ("lambda", "out_of_fold_r"))
    if not isinstance(value.get("target", ""), (str, type(None))):
        raise EntmtpError(f"{where}: probe target must be a string")
    return Probe(weights=None if weights is None else tuple(checked_number(w, f"{where}: probe weights", -math.inf)
                                                            for w in weights),
                 lam=lam, out_of_fold_r=r, target=value.get("target"))


# What a bank may recommend for `--method entmtp`: a scheduler that needs no --tree and
# is not the analysis-only oracle.
_RECOMMENDABLE = ("entropy", "rate", "static-best")


def _recommended(value: Any, where: str) -> SchedulerSpec:
    if not isinstance(value, dict) or value.get("scheduler") not in _RECOMMENDABLE:
        raise EntmtpError(f"{where}: 'recommended' must name a scheduler ({', '.join(_RECOMMENDABLE)})")
    signal = value.get("signal")
    if signal is not None and signal not in RATE_SIGNALS:
        raise EntmtpError(f"{where}: recommended signal {short_repr(signal)} is not one of {', '.join(RATE_SIGNALS)}")
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


def read_bank_document(name_or_path: str | os.PathLike) -> tuple[Any, str]:
    """(JSON document, how errors name it) of a .json file path or a shipped bank's
    name: a bank, or a machine-free bank source (entmtp.tune.source)."""
    text = os.fspath(name_or_path)
    if text.endswith(".json") or os.sep in text or (os.altsep is not None and os.altsep in text):
        where = f"bank file {text!r}"
        return read_document(Path(text), where), where
    names = list_banks()
    if text not in names:
        # A bare word is what the user typed after --bank: a usage mistake (exit 2).
        raise UsageError(f"unknown bank {short_repr(text)}; shipped banks: {', '.join(names) or '(none)'} "
                         "(or pass a path to a .json file)")
    return _shipped_document(text)


def shipped_bank_document(model_name: str, heads_kind: str, task: str) -> tuple[Any, str]:
    """The bank (source) shipped for a model, its kind of heads and a task (what
    `--method entmtp` uses without --bank); a UsageError naming what is missing."""
    name = shipped_bank_name(model_name, heads_kind, task)
    if name not in list_banks():
        raise UsageError(f"no shipped bank for model {model_name!r} with {heads_kind} heads on task {task!r}; "
                         f"calibrate one (entmtp calibrate --task {task} --head-kind {heads_kind}, then "
                         "entmtp trees build --calibration FILE) and pass --bank FILE")
    return _shipped_document(name)


def _shipped_document(name: str) -> tuple[Any, str]:
    where = f"shipped bank {name!r}"
    return parse_document(bank_dir().joinpath(name + ".json").read_text(encoding="utf-8"), where), where


def load_bank(name_or_path: str | os.PathLike) -> Bank:
    """A built bank (`entmtp-bank/1`) from a file or a shipped name. A machine-free
    source is refused here: it needs a machine's cost curve (entmtp.tune.loading)."""
    return bank_from_document(*read_bank_document(name_or_path))


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
