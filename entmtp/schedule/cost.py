"""The cost model: a tree's ms per step, interpolated from a measured cost curve.

A cost curve is a list of points {nodes, depth, ms} (plus one {peek: true} point:
head 0 run, then a root-only step) measured by entmtp.tune.timing on one machine."""
from __future__ import annotations

import bisect
import math
import statistics
from typing import Any, Sequence

from entmtp.errors import EntmtpError

MAX_POINTS = 1024


def check_points(cost_curve: Any, where: str) -> list:
    """Every reader's assumptions about a curve: a list of {nodes, depth: integers >= 0,
    ms: a positive finite number, peek: optional bool}, or one EntmtpError."""
    if not isinstance(cost_curve, list) or not 1 <= len(cost_curve) <= MAX_POINTS:
        raise EntmtpError(f"{where}: the cost curve must be a list of 1 to {MAX_POINTS} points")
    for point in cost_curve:
        if not isinstance(point, dict):
            raise EntmtpError(f"{where}: every cost-curve point must be an object, not {type(point).__name__}")
        for name in ("nodes", "depth"):
            value = point.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
                raise EntmtpError(f"{where}: cost-curve point {name} must be an integer >= 0, not "
                                  f"{str(value)[:40]}")
        ms = point.get("ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms <= 0:
            raise EntmtpError(f"{where}: cost-curve point ms must be a positive number, not {str(ms)[:40]}")
        if not isinstance(point.get("peek", False), bool):
            raise EntmtpError(f"{where}: cost-curve point peek must be true or false")
    if not any(p["nodes"] > 0 and not p.get("peek") for p in cost_curve):
        raise EntmtpError(f"{where}: the cost curve has no point with drafted nodes")
    return cost_curve


def _root_ms(cost_curve: Sequence[dict]) -> float | None:
    zero = [p["ms"] for p in cost_curve if p["nodes"] == 0 and not p.get("peek")]
    return float(statistics.fmean(zero)) if zero else None


def step_ms(cost_curve: Sequence[dict], nodes: int, depth: int) -> float:
    """Interpolated ms per step for a tree of `nodes` drafted nodes and `depth`,
    from the points of the nearest measured depth and the root-only point (linear in
    nodes, extrapolated with the last segment's slope; repeated points averaged;
    never below the root-only step)."""
    cost_curve = [p for p in cost_curve if not p.get("peek")]
    root = _root_ms(cost_curve)
    if nodes == 0 and root is not None:
        return root
    depths = sorted({p["depth"] for p in cost_curve if p["nodes"] > 0})
    if not depths:
        raise EntmtpError("the cost curve has no measured trees")
    nearest = min(depths, key=lambda d: (abs(d - depth), -d))
    by_nodes: dict[int, list[float]] = {}
    for p in cost_curve:
        if p["depth"] == nearest and p["nodes"] > 0:
            by_nodes.setdefault(p["nodes"], []).append(float(p["ms"]))
    points = sorted((x, statistics.fmean(ys)) for x, ys in by_nodes.items())
    if root is not None:
        points.insert(0, (0, root))
    if len(points) == 1 or nodes <= points[0][0]:
        value = points[0][1]
    else:
        xs = [x for x, _ in points]
        i = min(max(bisect.bisect_left(xs, nodes), 1), len(points) - 1)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        value = y0 + (y1 - y0) * (nodes - x0) / (x1 - x0)
    return float(max(value, root if root is not None else 0.0, 1e-6))


def peek_cost(cost_curve: Sequence[dict]) -> float:
    """ms head 0 adds when it runs and the step then drafts nothing (the "peek"
    point of the curve minus the root-only step); 0 when not measured."""
    peek = [p["ms"] for p in cost_curve if p.get("peek")]
    if not peek:
        return 0.0
    return max(0.0, float(peek[0]) - step_ms([p for p in cost_curve if not p.get("peek")], 0, 0))


def monotone_curve(cost_curve: Sequence[dict]) -> list[dict]:
    """The curve with its noise ironed out: per depth, ms made non-decreasing in nodes
    (pool-adjacent-violators: a violating run becomes its mean), and root-only at most
    the cheapest drafted step. A step never gets cheaper by drafting more, so a dip
    is a slow spell of a shared machine during the measurement, not a fact a bank
    should build on."""
    points = [dict(p) for p in cost_curve]
    by_depth: dict[int, list[dict]] = {}
    for p in points:
        if p["nodes"] > 0 and not p.get("peek"):
            by_depth.setdefault(p["depth"], []).append(p)
    for group in by_depth.values():
        group.sort(key=lambda p: p["nodes"])
        blocks: list[list] = []   # [sum of ms, count]
        for p in group:
            blocks.append([p["ms"], 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
        fitted = [total / count for total, count in blocks for _ in range(count)]
        for p, ms in zip(group, fitted):
            p["ms"] = round(ms, 3)
    drafted = [p["ms"] for group in by_depth.values() for p in group]
    for p in points:
        if p["nodes"] == 0 and not p.get("peek") and drafted:
            p["ms"] = min(p["ms"], min(drafted))
    return points
