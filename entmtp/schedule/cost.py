"""The cost model: a tree's ms per step, interpolated from a measured cost curve.

A cost curve is a list of points {nodes, depth, ms} (plus one {peek: true} point:
head 0 run, then a root-only step) measured by entmtp.tune.timing on one machine."""
from __future__ import annotations

import bisect
from typing import Sequence

from entmtp.errors import EntmtpError


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
