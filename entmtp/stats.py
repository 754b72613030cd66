"""Pearson correlation, the one copy: the probe's fit (entmtp.tune.probe) and
`bench --analysis` (entmtp.bench.analysis) both rank signals by it."""
from __future__ import annotations

import math
from typing import Optional, Sequence


def pearson(xs: Sequence[Optional[float]], ys: Sequence[Optional[float]]) -> Optional[float]:
    """r over the pairs where both are known; None below 3 pairs or without spread."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    if sxx <= 0 or syy <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pairs) / math.sqrt(sxx * syy)
