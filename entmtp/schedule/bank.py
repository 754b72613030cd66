"""Tree banks: a task's Pareto-optimal trees, their calibration tables and cost.

Built by `entmtp trees build` from a calibration file (entmtp/calibrate.py):
  1. candidates: greedy node-by-node growth for every maximum depth, sizes 1..N,
     plus the root-only tree (a step that drafts nothing);
  2. each candidate's accepted length predicted from the superset rollout
     (biased) and its step time from the measured cost curve;
  3. the Pareto hulls on (nodes, accepted length) and (nodes, predicted tok/s);
  4. the bank: the candidates that are best (predicted tok/s) in some signal
     bin, plus the best single tree, re-run with their own buffers (self-rollout) to de-bias their
     accepted length;
  5. the paper's threshold ladder on the entropy EMA, fit on the calibration steps.

A bank file (`entmtp-bank/1`) is validated into a frozen `Bank`; `bank_policy`
turns it into a scheduler (entmtp/scheduling.py).
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import importlib.resources
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from entmtp.tune.calibrate import CALIBRATION_FORMAT, grow_trees, node_acceptance
from entmtp.errors import EntmtpError, UsageError
from entmtp.schedule.policies import (DRAFT, BinnedPolicy, JointPolicy, OraclePolicy, PeekPolicy, SIGNALS, Signals,
                         StaticPolicy, TreePolicy)
from entmtp.trees.tree import SHIPPED_TREES_PACKAGE, Tree, read_text_file, tree_from_paths

BANK_FORMAT = "entmtp-bank/1"
SCHEDULERS = ("entropy", "rate", "static-best", "static", "oracle")
# "now": head 0's top-1 probability at this step's root, read after head 0 runs
# (PeekPolicy); the lagged SIGNALS are known before the step.
TABLE_SIGNALS = SIGNALS + ("now",)
RATE_SIGNALS = SIGNALS + ("all", "now")
RECOMMENDED = ("rate", "now")          # the scheduler and signal `--method entmtp` means
SINGLE_BINS = 5                        # quantile bins per signal
JOINT_BINS = 3                         # per signal in the entropy x accept table
MIN_BIN_STEPS = 30                     # fewer calibration steps: fall back to the overall table
_BANK_KEYS = {"format", "name", "provenance", "window", "trees", "static_best", "hulls", "signals",
              "tables", "ladder", "cost_curve", "peek_ms", "probe", "recommended", "calibration_rates"}
_TREE_KEYS = {"name", "paths", "nodes", "depth", "accept_biased", "accept_self_rollout", "step_ms",
              "predicted_tokens_per_second"}


def path_key(path: Sequence[int]) -> str:
    return ",".join(map(str, path))


def parse_path_key(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split(",")) if key else ()


# --------------------------------------------------------------------------- #
# Cost model
# --------------------------------------------------------------------------- #

def step_ms(cost_curve: Sequence[dict], nodes: int, depth: int) -> float:
    """Interpolated ms per step for a tree of `nodes` drafted nodes and `depth`,
    from the measured points of the nearest depth (linear in nodes, extrapolated
    with the last segment's slope)."""
    cost_curve = [p for p in cost_curve if not p.get("peek")]
    if nodes == 0:
        zero = [p["ms"] for p in cost_curve if p["nodes"] == 0]
        if zero:
            return float(zero[0])
    depths = sorted({p["depth"] for p in cost_curve if p["nodes"] > 0})
    if not depths:
        raise EntmtpError("the cost curve has no measured trees")
    nearest = min(depths, key=lambda d: (abs(d - depth), -d))
    points = sorted((p["nodes"], p["ms"]) for p in cost_curve if p["depth"] == nearest and p["nodes"] > 0)
    xs = [x for x, _ in points]
    if len(points) == 1:
        return float(points[0][1])
    i = min(max(bisect.bisect_left(xs, nodes), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return float(y0 + (y1 - y0) * (nodes - x0) / (x1 - x0))


def peek_cost(cost_curve: Sequence[dict]) -> float:
    """ms head 0 adds when it runs and the step then drafts nothing (the "peek"
    point of the curve minus the root-only step); 0 when not measured."""
    peek = [p["ms"] for p in cost_curve if p.get("peek")]
    if not peek:
        return 0.0
    return max(0.0, float(peek[0]) - step_ms([p for p in cost_curve if not p.get("peek")], 0, 0))


# --------------------------------------------------------------------------- #
# Statistics on calibration steps
# --------------------------------------------------------------------------- #

def quantile_edges(values: Sequence[Optional[float]], bins: int) -> list[float]:
    """Strictly increasing inner edges splitting `values` into ~equal bins."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return []
    edges = []
    for i in range(1, bins):
        edge = data[min(len(data) - 1, int(len(data) * i / bins))]
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return [round(e, 5) for e in edges]


def bin_of(value: Optional[float], edges: Sequence[float]) -> Optional[int]:
    return None if value is None else bisect.bisect_right(edges, value)


def accepted_in(tree_paths: set, ranks: Sequence[int]) -> int:
    """Accepted length a tree would have had, given the superset's accepted rank path."""
    length = 0
    while length < len(ranks) and tuple(ranks[:length + 1]) in tree_paths:
        length += 1
    return length


def _tables(steps: dict, nodes: Sequence[tuple[int, ...]], edges: dict) -> dict:
    """Per signal and bin: node acceptance probabilities and the number of steps."""
    ranks = steps["accepted_ranks"]
    tables: dict[str, Any] = {"overall": {"steps": len(ranks), "p": _keyed(node_acceptance(ranks, nodes))}}
    for signal in TABLE_SIGNALS:
        column = steps[_COLUMN[signal]]
        rows = []
        for b in range(len(edges[signal]) + 1):
            chosen = [r for r, v in zip(ranks, column) if bin_of(v, edges[signal]) == b]
            rows.append({"steps": len(chosen), "p": _keyed(node_acceptance(chosen, nodes))})
        tables[signal] = rows
    joint = []
    joint_edges = edges["joint"]
    for be in range(len(joint_edges["entropy"]) + 1):
        row = []
        for ba in range(len(joint_edges["accept"]) + 1):
            chosen = [r for r, e, a in zip(ranks, steps["entropy_ema"], steps["accept_ema"])
                      if bin_of(e, joint_edges["entropy"]) == be and bin_of(a, joint_edges["accept"]) == ba]
            row.append({"steps": len(chosen), "p": _keyed(node_acceptance(chosen, nodes))})
        joint.append(row)
    tables["joint"] = joint
    return tables


_COLUMN = {"entropy": "entropy_ema", "accept": "accept_ema", "confidence": "confidence_prev", "probe": "probe",
           "now": "confidence"}


def _keyed(probability: dict) -> dict:
    return {path_key(p): round(v, 5) for p, v in probability.items() if v > 0}


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #

@dataclasses.dataclass
class Candidate:
    name: str
    paths: tuple[tuple[int, ...], ...]
    depth: int
    accept_biased: float
    step_ms: float
    accept_self_rollout: Optional[float] = None

    @property
    def nodes(self) -> int:
        return len(self.paths)

    @property
    def accept(self) -> float:
        return self.accept_self_rollout if self.accept_self_rollout is not None else self.accept_biased

    @property
    def tokens_per_second(self) -> float:
        return 1000.0 * (self.accept + 1.0) / self.step_ms


def check_calibration(document: Any, where: str) -> dict:
    if not isinstance(document, dict) or document.get("format") != CALIBRATION_FORMAT:
        raise EntmtpError(f"{where} is not an {CALIBRATION_FORMAT} calibration file")
    for key in ("provenance", "window", "superset", "steps", "cost_curve"):
        if key not in document:
            raise EntmtpError(f"{where}: missing key {key!r}")
    if not document["steps"].get("accepted_ranks"):
        raise EntmtpError(f"{where}: no calibration steps recorded")
    return document


def read_calibration(path: Path) -> dict:
    where = f"calibration file {str(path)!r}"
    try:
        document = json.loads(read_text_file(Path(path), where))
    except json.JSONDecodeError as error:
        raise EntmtpError(f"{where} is not valid JSON: {error}") from None
    return check_calibration(document, where)


def candidates_from(calibration: dict, max_nodes: int) -> list[Candidate]:
    steps, curve = calibration["steps"], calibration["cost_curve"]
    superset = [tuple(p) for p in calibration["superset"]]
    probability = node_acceptance(steps["accepted_ranks"], superset)
    n_heads = max(len(p) for p in superset)
    found: dict[tuple, Candidate] = {(): Candidate("n0", (), 0, 0.0, step_ms(curve, 0, 0))}
    for depth in range(1, n_heads + 1):
        for paths in grow_trees(probability, depth, max_nodes):
            canonical = tuple(sorted(paths, key=lambda p: (len(p), p)))
            if canonical in found:
                continue
            tree_depth = max(len(p) for p in canonical)
            accept = sum(probability[p] for p in canonical)
            found[canonical] = Candidate(f"n{len(canonical)}d{tree_depth}", canonical, tree_depth, accept,
                                         step_ms(curve, len(canonical), tree_depth))
    return sorted(found.values(), key=lambda c: (c.nodes, c.depth))


def pareto(candidates: Sequence[Candidate], value: Callable[[Candidate], float]) -> list[Candidate]:
    """Kept when strictly better than every candidate with fewer or equal nodes."""
    hull, best = [], -math.inf
    for nodes, group in itertools.groupby(sorted(candidates, key=lambda c: c.nodes), key=lambda c: c.nodes):
        top = max(group, key=value)
        if value(top) > best:
            hull.append(top)
            best = value(top)
    return hull


def _expected(tree_paths: Sequence[tuple[int, ...]], table: dict, correction: float) -> float:
    p = table["p"]
    return correction * sum(p.get(path_key(path), 0.0) for path in tree_paths)


def fit_ladder(trees: Sequence[Candidate], steps: dict) -> tuple[list[int], list[float]]:
    """The paper's scheduler: entropy EMA through increasing thresholds, low
    entropy -> larger tree. Trees are taken largest first; every ordered subset
    and every choice of thresholds among the entropy quantiles (5%..95%) is scored
    by calibration tokens / modeled time; returns (tree indices, thresholds)."""
    rows = sorted((e, r) for e, r in zip(steps["entropy_ema"], steps["accepted_ranks"]) if e is not None)
    order = sorted(range(len(trees)), key=lambda i: (-trees[i].nodes, -trees[i].depth))
    if not rows:
        return [order[0]], []
    path_sets = [set(t.paths) for t in trees]
    correction = [t.accept / t.accept_biased if t.accept_biased > 0 else 1.0 for t in trees]
    # prefix[i][n]: tokens tree i would emit over the n lowest-entropy steps
    # (accepted, self-rollout corrected, + 1 bonus); one threshold set is then O(trees).
    prefix = []
    for i in range(len(trees)):
        sums = [0.0]
        for _, ranks in rows:
            sums.append(sums[-1] + 1.0 + correction[i] * accepted_in(path_sets[i], ranks))
        prefix.append(sums)
    values = [e for e, _ in rows]
    grid = sorted({values[int(len(values) * q / 20)] for q in range(1, 20)})
    cut_at = {t: bisect.bisect_right(values, t) for t in grid}
    ms = [t.step_ms for t in trees]
    best = (-1.0, [order[0]], [])
    for count in range(1, min(len(order), 5) + 1):
        for subset in itertools.combinations(order, count):
            for thresholds in itertools.combinations(grid, count - 1):
                cuts = [0] + [cut_at[t] for t in thresholds] + [len(rows)]
                total_tokens = total_ms = 0.0
                for tree, lo, hi in zip(subset, cuts, cuts[1:]):
                    total_tokens += prefix[tree][hi] - prefix[tree][lo]
                    total_ms += (hi - lo) * ms[tree]
                rate = total_tokens / total_ms if total_ms else 0.0
                if rate > best[0] + 1e-12:
                    best = (rate, list(subset), [round(t, 5) for t in thresholds])
    return best[1], best[2]


def build_bank(calibration: dict, name: str, *, max_nodes: int = 128, bank_size: int = 6,
               self_rollout: Optional[Callable[[list[Candidate]], None]] = None) -> dict:
    """The bank document for a calibration. `self_rollout(trees)` sets each
    tree's accept_self_rollout by decoding with it (None: keep the biased values)."""
    steps = calibration["steps"]
    candidates = candidates_from(calibration, max_nodes)
    accept_hull = pareto(candidates, lambda c: c.accept_biased)
    speed_hull = pareto(candidates, lambda c: c.tokens_per_second)
    superset = [tuple(p) for p in calibration["superset"]]
    edges = {s: quantile_edges(steps[_COLUMN[s]], SINGLE_BINS) for s in TABLE_SIGNALS}
    edges["joint"] = {s: quantile_edges(steps[_COLUMN[s]], JOINT_BINS) for s in ("entropy", "accept")}
    tables = _tables(steps, superset, edges)

    # The bank: the best candidate in every bin of every table, and the best overall.
    # Every grown candidate competes: a tree that wins only in low-entropy stretches
    # need not be on the hull of averages.
    pool = candidates
    votes: dict[int, int] = {}

    peek_ms = peek_cost(calibration["cost_curve"])

    def vote(table: dict, allow_root_only: bool = True, always: bool = False, extra_root_ms: float = 0.0) -> None:
        if table["steps"] < MIN_BIN_STEPS and not always:
            return
        options = [c for c in pool if allow_root_only or c.nodes > 0]
        best = max(options, key=lambda c: (_expected(c.paths, table, 1.0) + 1)
                   / (c.step_ms + (extra_root_ms if c.nodes == 0 else 0.0)))
        votes[id(best)] = votes.get(id(best), 0) + max(table["steps"], 1)

    vote(tables["overall"], always=True)
    for signal in SIGNALS:
        for table in tables[signal]:
            vote(table, allow_root_only=signal in ("entropy", "probe"))
    for table in tables["now"]:
        vote(table, extra_root_ms=peek_ms)
    for row in tables["joint"]:
        for table in row:
            vote(table)
    ranked = sorted(pool, key=lambda c: -votes.get(id(c), 0))
    chosen = [c for c in ranked if votes.get(id(c), 0) > 0][:bank_size]
    if self_rollout is not None:
        self_rollout([c for c in chosen if c.nodes > 0])
    for c in chosen:
        if c.nodes == 0:
            c.accept_self_rollout = 0.0
    chosen.sort(key=lambda c: (c.nodes, c.depth))
    static_best = max(chosen, key=lambda c: c.tokens_per_second)
    ladder_indices, thresholds = fit_ladder(chosen, steps)
    union = sorted({p for c in chosen for p in c.paths}, key=lambda p: (len(p), p))
    kept_keys = {path_key(p) for p in union}

    def trim(table: dict) -> dict:
        return {"steps": table["steps"], "p": {k: v for k, v in table["p"].items() if k in kept_keys}}

    provenance = dict(calibration["provenance"])
    provenance["built"] = datetime.datetime.now().isoformat(timespec="seconds")
    provenance["built_by"] = (f"entmtp trees build: greedy growth per depth up to {max_nodes} nodes, "
                              f"throughput hull, {len(chosen)} trees voted by signal bins, "
                              f"self-rollout: {'yes' if self_rollout else 'no'}")
    document = {
        "format": BANK_FORMAT,
        "name": name,
        "provenance": provenance,
        "window": calibration["window"],
        "trees": [{"name": c.name, "paths": [list(p) for p in c.paths], "nodes": c.nodes, "depth": c.depth,
                   "accept_biased": round(c.accept_biased, 4),
                   "accept_self_rollout": None if c.accept_self_rollout is None else round(c.accept_self_rollout, 4),
                   "step_ms": round(c.step_ms, 3),
                   "predicted_tokens_per_second": round(c.tokens_per_second, 2)} for c in chosen],
        "static_best": static_best.name,
        "hulls": {
            "accept": [[c.nodes, c.depth, round(c.accept_biased, 4)] for c in accept_hull],
            "throughput": [[c.nodes, c.depth, round(c.tokens_per_second, 2)] for c in speed_hull],
        },
        "signals": {**{s: edges[s] for s in TABLE_SIGNALS}, "joint": edges["joint"]},
        "peek_ms": round(peek_ms, 3),
        "probe": {k: v for k, v in calibration["probe"].items()},
        "tables": {"overall": trim(tables["overall"]),
                   **{s: [trim(t) for t in tables[s]] for s in TABLE_SIGNALS},
                   "joint": [[trim(t) for t in row] for row in tables["joint"]]},
        "ladder": {"signal": "entropy", "trees": [chosen[i].name for i in ladder_indices],
                   "thresholds": thresholds},
        "cost_curve": calibration["cost_curve"],
        "recommended": {"scheduler": RECOMMENDED[0], "signal": RECOMMENDED[1]},
        "calibration_rates": {},
    }
    # Which scheduler `--method entmtp` means for this bank: the one with the best
    # modeled tok/s replayed over the calibration steps (never evaluation data).
    bank = _bank_from_document(document, f"bank {name!r}")
    rates = replay_schedulers(bank, steps)
    document["calibration_rates"] = {k: round(v, 3) for k, v in rates.items()}
    best = max((k for k in rates if k not in ("static-best",)), key=lambda k: rates[k])
    if rates[best] <= rates["static-best"]:
        best = "static-best"
    scheduler, _, signal = best.partition(":")
    document["recommended"] = {"scheduler": scheduler, "signal": signal or None}
    return document


SCHEDULER_VARIANTS = ("static-best", "entropy", "rate:entropy", "rate:accept", "rate:confidence", "rate:probe",
                      "rate:all", "rate:now")


def replay_schedulers(bank: Bank, steps: dict) -> dict:
    """Modeled tok/s of each scheduler replayed over the calibration steps: each
    step's signals (the probe's out-of-fold values) pick a tree, which is credited
    the tokens it would have accepted there (self-rollout corrected) and charged
    its calibrated step time (plus the peek when a two-phase policy drafts nothing)."""
    ranks = steps["accepted_ranks"]
    path_sets = [set(t.paths) for t in bank.trees]
    rates = {}
    for variant in SCHEDULER_VARIANTS:
        scheduler, _, signal = variant.partition(":")
        policy = bank_policy(bank, scheduler, signal or "entropy")
        index = {t.name: i for i, t in enumerate(bank.trees)}
        tokens = ms = 0.0
        for i in range(len(ranks)):
            seen = Signals(steps["entropy_ema"][i], steps["accept_ema"][i], steps["confidence_prev"][i],
                           steps.get("probe", [None] * len(ranks))[i])
            choice = policy.choose(seen)
            extra = 0.0
            if choice == DRAFT:
                choice = policy.refine(steps["confidence"][i] or 0.0)
                extra = policy.peek_ms if policy.trees[choice].n_nodes == 1 else 0.0
            tree = index[policy.trees[choice].name]
            tokens += 1.0 + bank.correction[tree] * accepted_in(path_sets[tree], ranks[i])
            ms += bank.step_ms[tree] + extra
        rates[variant] = 1000.0 * tokens / ms if ms else 0.0
    return rates


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class Bank:
    name: str
    trees: tuple[Tree, ...]               # sorted by nodes; buffers are built by the decoder, once
    step_ms: tuple[float, ...]
    accept: tuple[float, ...]             # self-rollout accepted length (biased when not rolled out)
    correction: tuple[float, ...]         # accept / biased accept: scales the calibration tables
    static_best: int
    ladder: tuple[tuple[int, ...], tuple[float, ...]]
    window: float
    peek_ms: float
    probe: Any
    recommended: tuple[str, Optional[str]]
    edges: Any
    tables: Any
    provenance: Any
    document: Any = dataclasses.field(repr=False, compare=False)

    def index(self, tree_name: str) -> int:
        for i, tree in enumerate(self.trees):
            if tree.name == tree_name:
                return i
        raise EntmtpError(f"bank {self.name!r} has no tree {tree_name!r}; "
                          f"its trees: {', '.join(t.name for t in self.trees)}")

    def expected_accept(self, table: dict) -> list[float]:
        return [_expected(t.paths, table, c) for t, c in zip(self.trees, self.correction)]


def _bank_from_document(document: Any, where: str) -> Bank:
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
    trees, ms, accept, correction = [], [], [], []
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
                correction=tuple(correction), static_best=names.index(document["static_best"]),
                ladder=(tuple(names.index(n) for n in ladder_trees), tuple(float(t) for t in thresholds)),
                window=float(window), peek_ms=float(document["peek_ms"]), probe=document["probe"],
                recommended=_recommended(document["recommended"], where), edges=edges, tables=document["tables"],
                provenance=document["provenance"], document=document)


def _recommended(value: Any, where: str) -> tuple[str, Optional[str]]:
    if not isinstance(value, dict) or value.get("scheduler") not in SCHEDULERS or value.get("scheduler") == "oracle":
        raise EntmtpError(f"{where}: 'recommended' must name a scheduler ({', '.join(SCHEDULERS[:4])})")
    signal = value.get("signal")
    if signal is not None and signal not in RATE_SIGNALS:
        raise EntmtpError(f"{where}: recommended signal {signal!r} is not one of {', '.join(RATE_SIGNALS)}")
    return value["scheduler"], signal


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
        raw = read_text_file(Path(text), where)
    else:
        names = list_banks()
        if text not in names:
            raise EntmtpError(f"unknown bank {text!r}; shipped banks: {', '.join(names) or '(none)'} "
                              "(or pass a path to a .json file)")
        where = f"shipped bank {text!r}"
        raw = bank_dir().joinpath(text + ".json").read_text(encoding="utf-8")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        raise EntmtpError(f"{where} is not valid JSON: line {error.lineno} column {error.colno}: {error.msg}") from None
    return _bank_from_document(document, where)


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

    weights = bank.probe.get("weights") if isinstance(bank.probe, dict) else None
    hidden = bank.provenance.get("model", {}).get("hidden_size")
    if not isinstance(weights, list) or len(weights) != (hidden or 0) + 1:
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
