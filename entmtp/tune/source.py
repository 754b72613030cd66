"""Machine-free bank sources: what the heads get right, without what a step costs.

A bank mixes two kinds of knowledge. Acceptance (per node, per signal bin, de-biased
by self-rollout) belongs to the model, the heads and the task; the cost curve
belongs to the machine. A source (`entmtp-bank-source/1`, what entmtp ships in
trees/banks/) keeps only the first:

  * the calibration steps (signals before each step, the superset's accepted rank
    path), the superset, the probe and the EMA window, with their provenance;
  * self-rollouts: the accepted length per step measured with a grid of candidate
    trees' own buffers (sizes ROLLOUT_SIZES per depth, and the shipped trees), beside
    the superset's prediction for the same prompts and tokens; every candidate's
    de-biasing ratio is interpolated from theirs;
  * the shipped trees the superset holds, as extra candidates (mc_sim_7b_63 ...).

`derive_bank(source, curve)` builds the bank (`entmtp-bank/1`: members, hulls,
ladder, per-bin choices, recommended scheduler; entmtp.tune.build) for one cost
curve, in about a second; entmtp.tune.machine_cost supplies this machine's.
"""
from __future__ import annotations

import bisect
import datetime
import math
from typing import Any, Callable, Optional, Sequence

from entmtp.defaults import HEAD_KINDS
from entmtp.errors import EntmtpError
from entmtp.schedule.bank import (
    MAX_WINDOW,
    SOURCE_FORMAT,
    check_keys,
    checked_number,
    checked_object,
    checked_probe,
    checked_provenance,
)
from entmtp.schedule.cost import monotone_curve
from entmtp.schedule.signals import BiasCorrectedEMA
from entmtp.trees.files import list_trees, load_tree
from entmtp.trees.growth import accepted_in, node_acceptance
from entmtp.trees.tree import MAX_DEPTH, MAX_NODES, MAX_RANK, check_name, short_repr, tree_from_paths
from entmtp.tune.build import Candidate, build_bank, candidates_from, canonical_paths

ROLLOUT_SIZES = (1, 4, 16, 64)   # per depth; others are interpolated in log(nodes)
STEP_COLUMNS = ("entropy_ema", "accept_ema", "confidence_prev", "confidence", "probe")
MAX_STEPS, MAX_ROLLOUTS, MAX_EXTRA = 200_000, 256, 32
_SOURCE_KEYS = {"format", "name", "provenance", "window", "superset", "probe", "steps", "max_nodes",
                "extra_trees", "rollouts"}


def is_source(document: Any) -> bool:
    return isinstance(document, dict) and document.get("format") == SOURCE_FORMAT


# --------------------------------------------------------------------------- #
# Building (entmtp trees build)
# --------------------------------------------------------------------------- #


def shipped_extras(superset: Sequence[Sequence[int]]) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """The shipped trees whose nodes the superset holds (their tables are then exact)."""
    inside = {tuple(p) for p in superset}
    extras = []
    for name in list_trees():
        paths = canonical_paths(load_tree(name).paths)
        if paths and all(p in inside for p in paths):
            extras.append((name, paths))
    return extras


def rollout_grid(calibration: dict, max_nodes: int, extras: Sequence[tuple[str, Sequence]]) -> list[Candidate]:
    """The candidates a source measures by self-rollout: per maximum depth, the greedy
    tree at each of ROLLOUT_SIZES nodes, and the extra (shipped) trees."""
    flat = [{"nodes": 0, "depth": 0, "ms": 1.0}, {"nodes": 1, "depth": 1, "ms": 1.0}]   # cost plays no part here
    extra_paths = {canonical_paths(p) for _, p in extras}
    return [c for c in candidates_from(calibration, max_nodes, flat, extras)
            if c.nodes in ROLLOUT_SIZES or c.paths in extra_paths]


def build_source(calibration: dict, name: str, *, max_nodes: int = 128,
                 self_rollout: Optional[Callable[[list[Candidate]], None]] = None,
                 rollout_setup: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
    """The source document for a calibration; `self_rollout(trees)` sets each grid
    tree's accept_self_rollout by decoding with it (None: no de-biasing recorded);
    `rollout_setup` (prompts, tokens) is recorded beside it."""
    check_name(name, "bank name")
    superset = calibration["superset"]
    extras = shipped_extras(superset)
    grid = rollout_grid(calibration, max_nodes, extras)
    if self_rollout is not None:
        log(f"self-rollout of {len(grid)} grid trees (sizes {', '.join(map(str, ROLLOUT_SIZES))} per depth, and "
            f"{', '.join(n for n, _ in extras) or 'no shipped trees'})")
        self_rollout(grid)
    steps = calibration["steps"]
    # A grid tree's de-biasing ratio compares like with like: its self-rollout against the
    # superset's prediction on the same prompts and the same leading tokens of each.
    same = _rollout_steps(steps, superset, rollout_setup) if self_rollout is not None else None
    provenance = {k: v for k, v in calibration["provenance"].items()
                  if k not in ("cost_date", "cost_repeats", "threads")}
    provenance["built"] = datetime.datetime.now().isoformat(timespec="seconds")
    provenance["built_by"] = (f"entmtp trees build: machine-free source, greedy growth per depth up to {max_nodes} "
                              f"nodes, self-rollout of {len(grid) if self_rollout else 0} grid trees")
    if self_rollout is not None and rollout_setup:
        provenance["self_rollout"] = dict(rollout_setup)
    return {
        "format": SOURCE_FORMAT,
        "name": name,
        "provenance": provenance,
        "window": calibration["window"],
        "superset": superset,
        "probe": calibration["probe"],
        "max_nodes": max_nodes,
        "steps": {column: steps[column] for column in ("prompt", *STEP_COLUMNS, "accepted_ranks")},
        "extra_trees": [{"name": n, "paths": [list(p) for p in paths]} for n, paths in extras],
        "rollouts": [{"name": c.name, "paths": [list(p) for p in c.paths], "accept": round(c.accept_self_rollout, 4),
                      "biased": round(sum(same[p] for p in c.paths), 4)}
                     for c in grid if c.accept_self_rollout is not None and c.nodes > 0],
    }


def _rollout_steps(steps: dict, superset: Sequence[Sequence[int]], setup: Optional[dict]) -> dict:
    """Node acceptance over the calibration steps a self-rollout decoded too: the first
    `prompts` prompts (they are the first calibration prompts), each up to its first
    `tokens` tokens (a step emits accepted + 1)."""
    setup = setup or {}
    n_prompts, n_tokens = setup.get("prompts", math.inf), setup.get("tokens", math.inf)
    chosen, emitted, last = [], 0, None
    for prompt, ranks in zip(steps["prompt"], steps["accepted_ranks"]):
        if prompt != last:
            emitted, last = 0, prompt
        if prompt < n_prompts and emitted < n_tokens:
            chosen.append(ranks)
        emitted += len(ranks) + 1
    return node_acceptance(chosen, [tuple(p) for p in superset])


# --------------------------------------------------------------------------- #
# Validation: every reader relies on this structure (fuzzed in tests)
# --------------------------------------------------------------------------- #


def _paths(value: Any, what: str) -> tuple[tuple[int, ...], ...]:
    try:
        return canonical_paths(tree_from_paths("paths", value).paths) if isinstance(value, list) else _bad(what)
    except EntmtpError as error:
        raise EntmtpError(f"{what}: {error}") from None


def _bad(what: str):
    raise EntmtpError(f"{what} must be a list of rank paths")


def check_source(document: Any, where: str) -> dict:
    """A validated source document (typed one-line errors only); returns it."""
    if not is_source(document):
        raise EntmtpError(f"{where}: format is {short_repr(checked_object(document, where).get('format'))}, "
                          f"expected {SOURCE_FORMAT!r}")
    check_keys(document, _SOURCE_KEYS, set(), where)
    checked_number(document["window"], f"{where}: window", 1.0, MAX_WINDOW)
    superset = _paths(document["superset"], f"{where}: 'superset'")
    if not superset:
        raise EntmtpError(f"{where}: 'superset' has no nodes")
    inside = set(superset)
    max_nodes = document["max_nodes"]
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or not 1 <= max_nodes <= MAX_NODES:
        raise EntmtpError(f"{where}: max_nodes must be an integer from 1 to {MAX_NODES}, not {short_repr(max_nodes)}")
    checked_probe(document["probe"], where)
    steps = checked_object(document["steps"], f"{where}: 'steps'")
    ranks = steps.get("accepted_ranks")
    if not isinstance(ranks, list) or not 1 <= len(ranks) <= MAX_STEPS:
        raise EntmtpError(f"{where}: 'steps.accepted_ranks' must be a list of 1 to {MAX_STEPS} rank paths")
    for path in ranks:
        if (not isinstance(path, list) or len(path) > MAX_DEPTH
                or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= MAX_RANK for r in path)):
            raise EntmtpError(f"{where}: every 'steps.accepted_ranks' entry must be a list of at most {MAX_DEPTH} "
                              f"ranks from 0 to {MAX_RANK}, not {short_repr(path)}")
    for column in STEP_COLUMNS:
        values = steps.get(column)
        if not isinstance(values, list) or len(values) != len(ranks):
            raise EntmtpError(f"{where}: 'steps.{column}' must be a list with one value per step ({len(ranks)})")
        for v in values:
            if v is not None:
                checked_number(v, f"{where}: 'steps.{column}' values", -math.inf)
    prompt = steps.get("prompt")
    if (not isinstance(prompt, list) or len(prompt) != len(ranks)
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < MAX_STEPS for p in prompt)):
        raise EntmtpError(f"{where}: 'steps.prompt' must be a list of one prompt index per step ({len(ranks)})")
    unknown_columns = sorted(set(steps) - set(STEP_COLUMNS) - {"accepted_ranks", "prompt"})
    if unknown_columns:
        raise EntmtpError(f"{where}: unknown step column(s) {', '.join(map(short_repr, unknown_columns[:8]))}")
    extra_trees = []
    for what, key, bound in (("extra tree", "extra_trees", MAX_EXTRA), ("rollout", "rollouts", MAX_ROLLOUTS)):
        entries = document[key]
        if not isinstance(entries, list) or len(entries) > bound:
            raise EntmtpError(f"{where}: {key!r} must be a list of at most {bound} objects")
        for entry in entries:
            entry = checked_object(entry, f"{where}: every {what}")
            allowed = {"name", "paths"} | ({"accept", "biased"} if key == "rollouts" else set())
            if set(entry) != allowed:
                raise EntmtpError(f"{where}: every {what} needs exactly the keys {', '.join(sorted(allowed))}")
            check_name(entry["name"], f"{where}: {what} name")
            paths = _paths(entry["paths"], f"{where}: {what} {entry['name']!r}")
            if not paths or not set(paths) <= inside:
                raise EntmtpError(f"{where}: {what} {entry['name']!r} must be a non-empty subtree of the superset")
            if key == "rollouts":
                for field in ("accept", "biased"):
                    checked_number(entry[field], f"{where}: rollout {entry['name']!r} {field}", 0.0,
                                   max(map(len, paths)))
            else:
                extra_trees.append(tree_from_paths(entry["name"], paths))
    names = [e["name"] for e in document["extra_trees"]]
    if len(set(names)) != len(names):
        raise EntmtpError(f"{where}: extra tree names must be unique")
    checked_provenance(document["provenance"], where, extra_trees + [tree_from_paths("superset", superset)])
    heads = document["provenance"].get("heads", {})
    if heads.get("kind") not in HEAD_KINDS:
        raise EntmtpError(f"{where}: provenance must say which heads it was built for ({', '.join(HEAD_KINDS)})")
    return document


# --------------------------------------------------------------------------- #
# Deriving a bank for one cost curve
# --------------------------------------------------------------------------- #


def corrections_from(rollouts: Sequence[dict]) -> Callable[[Candidate], float]:
    """A candidate's de-biased accepted length: its biased length (over every calibration
    step) times the ratio self-rollout / superset prediction that the grid trees of its
    depth measured on the rollout's own prompts and tokens, interpolated in log(nodes)
    (the nearest depth where it has none; 1 when nothing was rolled out). The ratio, not
    the rollout's own mean, because a few rollout prompts are not the whole split."""
    found: dict[int, dict[float, list[float]]] = {}
    for r in rollouts:
        paths = canonical_paths(r["paths"])
        if r["biased"] > 0:   # the superset's prediction on the rollout's own prompts and tokens
            found.setdefault(max(map(len, paths)), {}).setdefault(math.log(len(paths)), []).append(
                r["accept"] / r["biased"])
    # Two grid trees of one depth and size (tree16 and n16d3): their mean ratio.
    ratios = {d: sorted((x, sum(v) / len(v)) for x, v in by_x.items()) for d, by_x in found.items()}

    def corrected(c: Candidate) -> float:
        if not ratios or c.accept_biased <= 0:
            return c.accept_biased
        depth = min(ratios, key=lambda d: (abs(d - c.depth), -d))
        points = ratios[depth]
        x = math.log(c.nodes)
        xs = [p[0] for p in points]
        i = bisect.bisect_left(xs, x)
        if i == 0 or len(points) == 1:
            ratio = points[0][1]
        elif i == len(points):
            ratio = points[-1][1]
        else:
            (x0, y0), (x1, y1) = points[i - 1], points[i]
            ratio = y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
        return min(max(c.accept_biased * ratio, 0.0), float(c.depth))
    return corrected


def own_accept_ema(steps: dict, paths: Sequence[tuple[int, ...]], window: float) -> list[Optional[float]]:
    """The accept EMA a decoder drafting with `paths` alone would have seen before each
    calibration step: the EMA (reset per prompt) of the length that tree would have
    accepted at the steps before it. The recorded column is the superset's, whose
    accepted lengths are longer than any member's: bins cut on it sit above what a
    member's decoder ever observes."""
    ema, inside, out, last = BiasCorrectedEMA(window), set(paths), [], None
    for prompt, ranks in zip(steps["prompt"], steps["accepted_ranks"]):
        if prompt != last:
            ema.reset()
            last = prompt
        value = ema.value
        out.append(None if value is None else round(value, 5))
        ema.update(float(accepted_in(inside, ranks)))
    return out


def derive_bank(source: dict, cost_curve: Sequence[dict], *, cost: Optional[dict] = None, bank_size: int = 6,
                accept_history: str = "member") -> dict:
    """The bank document (`entmtp-bank/1`) a validated source gives on one cost curve
    (its noise ironed out first: entmtp.schedule.cost.monotone_curve).

    The accept signal's bins and tables are cut on the accept EMA of the best drafting
    tree on this curve (own_accept_ema), which is what a decoder running the bank's
    trees sees, and the schedulers are replayed on it; accept_history="superset" cuts
    them on the recorded superset EMA instead (the old bias, for measuring it)."""
    if accept_history not in ("member", "superset"):
        raise ValueError(f"accept_history must be member or superset, not {accept_history!r}")
    cost_curve = monotone_curve(cost_curve)
    steps = dict(source["steps"])
    calibration = {"steps": steps, "superset": source["superset"], "cost_curve": list(cost_curve),
                   "probe": source["probe"], "window": source["window"], "provenance": source["provenance"]}
    extras = [(e["name"], canonical_paths(e["paths"])) for e in source["extra_trees"]]
    max_nodes = source["max_nodes"]
    candidates = candidates_from(calibration, max_nodes, cost_curve, extras)
    corrected = corrections_from(source["rollouts"])
    drafting = [c for c in candidates if c.nodes > 0]
    reference = max(drafting, key=lambda c: (1.0 + corrected(c)) / c.step_ms)
    member_steps = dict(steps, accept_ema=own_accept_ema(steps, reference.paths, source["window"]))
    if accept_history == "member":
        calibration["steps"] = member_steps
    document = build_bank(calibration, source["name"], max_nodes=max_nodes, bank_size=bank_size,
                          cost_curve=cost_curve, corrected=corrected, extra=extras, cost=cost,
                          replay_steps=member_steps, candidates=candidates)
    document["provenance"]["built_by"] = (f"derived at load from source {source['name']!r} "
                                          f"({source['provenance'].get('built_by', '')}) on this cost curve; "
                                          f"accept EMA bins on the history of {reference.name} ({accept_history})")
    return document
