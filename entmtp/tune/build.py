"""A tree bank from calibration steps and one cost curve (entmtp.tune.source derives one
per machine from a bank source; the calibration file is read and checked here too).

  1. candidates: greedy node-by-node growth for every maximum depth, sizes 1..N,
     plus the root-only tree (a step that drafts nothing) and the shipped trees;
  2. each candidate's accepted length predicted from the superset rollout (biased,
     then de-biased by the source's self-rollouts) and its step time from the curve;
  3. the Pareto hulls on (nodes, accepted length) and (nodes, predicted tok/s);
  4. the bank: the candidates that are best (predicted tok/s) in some signal bin,
     plus the best single tree;
  5. the paper's threshold ladder on the entropy EMA, fit on the calibration steps;
  6. every scheduler replayed over the calibration steps: the best is the bank's recommendation."""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import itertools
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from entmtp.errors import EntmtpError, UsageError
from entmtp.jsonfile import read_json
from entmtp.schedule.bank import (
    BANK_FORMAT,
    MAX_BANK_TREES,
    MIN_BIN_STEPS,
    RECOMMENDED,
    TABLE_SIGNALS,
    Bank,
    bank_from_document,
    bank_policy,
    expected_accepted,
)
from entmtp.schedule.cost import peek_cost, step_ms
from entmtp.schedule.policies import DRAFT
from entmtp.schedule.signals import SIGNALS, Signals
from entmtp.schedule.spec import SchedulerSpec
from entmtp.trees.growth import accepted_in, grow_trees, node_acceptance, path_key
from entmtp.tune.calibrate import CALIBRATION_FORMAT

SINGLE_BINS = 5                        # quantile bins per signal


JOINT_BINS = 3                         # per signal in the entropy x accept table


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


# What the bank builder, --recost and the self-rollout read from a calibration's provenance.
_PROVENANCE_KEYS = {"model": ("name",), "heads": ("kind", "top_k", "fingerprint"), "task": (),
                    "prompt_ids": (), "max_new_tokens": (), "dtype": (), "device": ()}
_STEP_COLUMNS = ("entropy_ema", "accept_ema", "confidence_prev", "confidence", "probe")


def check_calibration(document: Any, where: str) -> dict:
    """The structure every reader of a calibration relies on, so a damaged or
    hand-edited file is one error naming the key, not a KeyError later."""
    if not isinstance(document, dict) or document.get("format") != CALIBRATION_FORMAT:
        raise EntmtpError(f"{where} is not an {CALIBRATION_FORMAT} calibration file")
    for key, kind in (("provenance", dict), ("window", (int, float)), ("superset", list), ("steps", dict),
                      ("probe", dict)):
        if key not in document:
            raise EntmtpError(f"{where}: missing key {key!r}")
        if not isinstance(document[key], kind) or isinstance(document[key], bool):
            raise EntmtpError(f"{where}: {key!r} has the wrong type ({type(document[key]).__name__})")
    provenance = document["provenance"]
    for key, inner in _PROVENANCE_KEYS.items():
        if key not in provenance or (inner and not isinstance(provenance[key], dict)):
            raise EntmtpError(f"{where}: missing or malformed key 'provenance.{key}'")
        for sub in inner:
            if sub not in provenance[key]:
                raise EntmtpError(f"{where}: missing key 'provenance.{key}.{sub}'")
    steps = document["steps"]
    ranks = steps.get("accepted_ranks")
    if not isinstance(ranks, list) or not all(isinstance(r, list) for r in ranks):
        raise EntmtpError(f"{where}: 'steps.accepted_ranks' must be a list of rank paths")
    if not ranks:
        raise EntmtpError(f"{where}: no calibration steps recorded")
    for column in (*_STEP_COLUMNS, "prompt"):
        if not isinstance(steps.get(column), list) or len(steps[column]) != len(ranks):
            raise EntmtpError(f"{where}: 'steps.{column}' must be a list with one value per step ({len(ranks)})")
    if not all(isinstance(p, list) and all(isinstance(r, int) and r >= 0 for r in p) for p in document["superset"]):
        raise EntmtpError(f"{where}: 'superset' must be a list of rank paths")
    # Older calibrations kept a cost curve (nothing reads it now): optional.
    curve = document.get("cost_curve", [])
    if not isinstance(curve, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), (int, float)) for k in ("nodes", "depth", "ms"))
            for p in curve):
        raise EntmtpError(f"{where}: every 'cost_curve' point needs numeric nodes, depth and ms")
    return document


def read_calibration(path: Path) -> dict:
    where = f"calibration file {str(path)!r}"
    return check_calibration(read_json(path, where), where)


def candidates_from(calibration: dict, max_nodes: int, cost_curve: Optional[Sequence[dict]] = None,
                    extra: Sequence[tuple[str, Sequence[tuple[int, ...]]]] = ()) -> list[Candidate]:
    """Greedy growth per depth (sizes 1..max_nodes, plus root-only), and the `extra`
    (name, paths) trees whose nodes the superset holds (their tables are exact),
    priced on `cost_curve` (default: the calibration's own)."""
    steps, curve = calibration["steps"], calibration["cost_curve"] if cost_curve is None else cost_curve
    superset = [tuple(p) for p in calibration["superset"]]
    probability = node_acceptance(steps["accepted_ranks"], superset)
    n_heads = max(len(p) for p in superset)
    found: dict[tuple, Candidate] = {(): Candidate("n0", (), 0, 0.0, step_ms(curve, 0, 0))}

    def add(name: str, canonical: tuple) -> None:
        if canonical not in found:
            depth = max(len(p) for p in canonical)
            found[canonical] = Candidate(name or f"n{len(canonical)}d{depth}", canonical, depth,
                                         sum(probability[p] for p in canonical), step_ms(curve, len(canonical), depth))

    for depth in range(1, n_heads + 1):
        for paths in grow_trees(probability, depth, max_nodes):
            add("", canonical_paths(paths))
    for name, paths in extra:
        canonical = canonical_paths(paths)
        if canonical and all(p in probability for p in canonical):
            add(name, canonical)
    return sorted(found.values(), key=lambda c: (c.nodes, c.depth))


def canonical_paths(paths: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted((tuple(p) for p in paths), key=lambda p: (len(p), p)))


def pareto(candidates: Sequence[Candidate], value: Callable[[Candidate], float]) -> list[Candidate]:
    """Kept when strictly better than every candidate with fewer or equal nodes."""
    hull, best = [], -math.inf
    for nodes, group in itertools.groupby(sorted(candidates, key=lambda c: c.nodes), key=lambda c: c.nodes):
        top = max(group, key=value)
        if value(top) > best:
            hull.append(top)
            best = value(top)
    return hull


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
               cost_curve: Optional[Sequence[dict]] = None, corrected: Optional[Callable[[Candidate], float]] = None,
               extra: Sequence[tuple[str, Sequence[tuple[int, ...]]]] = (), cost: Optional[dict] = None,
               replay_steps: Optional[dict] = None, candidates: Optional[list[Candidate]] = None) -> dict:
    """The bank document for calibration steps, on `cost_curve` (default: the one
    a calibration dict carries). Deriving a bank from a machine-free source
    (entmtp.tune.source) passes this machine's `cost_curve` (and `cost`, what it is: machine, date, origin),
    `corrected(candidate)` (its self-rollout accepted length, measured or
    interpolated; every candidate then votes with it) and the shipped trees as `extra`.
    `replay_steps`: the steps the schedulers are replayed on to pick the recommended
    one, when their signals differ from the ones the tables were binned by.
    `candidates`: candidates_from(calibration, max_nodes, cost_curve, extra) when the
    caller grew them already."""
    if not 1 <= bank_size <= MAX_BANK_TREES:  # load_bank refuses more: refused before any work, not after
        raise UsageError(f"bank_size must be 1 to {MAX_BANK_TREES} (the most trees a bank file may hold), "
                         f"got {bank_size}")
    steps = calibration["steps"]
    curve = list(calibration["cost_curve"] if cost_curve is None else cost_curve)
    if candidates is None:
        candidates = candidates_from(calibration, max_nodes, curve, extra)
    if corrected is not None:
        for c in candidates:
            c.accept_self_rollout = 0.0 if c.nodes == 0 else corrected(c)
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

    peek_ms = peek_cost(curve)

    def vote(table: dict, allow_root_only: bool = True, always: bool = False, extra_root_ms: float = 0.0) -> None:
        if table["steps"] < MIN_BIN_STEPS and not always:
            return
        options = [c for c in pool if allow_root_only or c.nodes > 0]
        best = max(options, key=lambda c: (expected_accepted(c.paths, table, _correction(c)) + 1)
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
    provenance["built_by"] = (f"greedy growth per depth up to {max_nodes} nodes, throughput hull, "
                              f"{len(chosen)} trees voted by signal bins, de-biased: "
                              f"{'yes' if corrected is not None else 'no'}")
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
        "cost_curve": curve,
        **({"cost": cost} if cost is not None else {}),
        "recommended": {"scheduler": RECOMMENDED.scheduler, "signal": RECOMMENDED.signal},
        "calibration_rates": {},
    }
    # Which scheduler `--method entmtp` means for this bank: the one with the best
    # modeled tok/s replayed over the calibration steps (never evaluation data).
    bank = bank_from_document(document, f"bank {name!r}")
    rates = replay_schedulers(bank, steps if replay_steps is None else replay_steps)
    document["calibration_rates"] = {k: round(v, 3) for k, v in rates.items()}
    best = max((k for k in rates if k != "static-best"), key=lambda k: rates[k])
    if rates[best] <= rates["static-best"]:
        best = "static-best"
    spec = SchedulerSpec.parse(best)
    document["recommended"] = {"scheduler": spec.scheduler, "signal": spec.signal}
    return document


def _correction(c: Candidate) -> float:
    """accept / biased accept: 1 until a self-rollout measured (or a source interpolated) it."""
    return c.accept / c.accept_biased if c.accept_self_rollout is not None and c.accept_biased > 0 else 1.0


SCHEDULER_VARIANTS = tuple(SchedulerSpec.parse(s) for s in (
    "static-best", "entropy", "rate:entropy", "rate:accept", "rate:confidence", "rate:probe", "rate:all", "rate:now"))


def replay_schedulers(bank: Bank, steps: dict) -> dict:
    """Modeled tok/s of each scheduler replayed over the calibration steps: each
    step's signals (the probe's out-of-fold values) pick a tree, which is credited
    the tokens it would have accepted there (self-rollout corrected) and charged
    its calibrated step time (plus the peek when a two-phase policy drafts nothing)."""
    ranks = steps["accepted_ranks"]
    path_sets = [set(t.paths) for t in bank.trees]
    rates = {}
    for variant in SCHEDULER_VARIANTS:
        policy = bank_policy(bank, variant.scheduler, variant.signal or "entropy")
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
        rates[str(variant)] = 1000.0 * tokens / ms if ms else 0.0
    return rates
