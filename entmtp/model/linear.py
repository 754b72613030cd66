"""Which bf16-weight GEMM to run on CPU: torch's oneDNN `F.linear` or our
`torch.ops.entmtp.linear_bf16w`, per weight shape and row count.

Neither wins everywhere: ours is 2-4x faster at 1-16 rows on an AMX
machine and on AVX2-only CPUs, oneDNN catches up or wins at 64-128 rows on AMX.
So the choice is measured, never guessed: the first call for a (N, K, row
bucket) times both on random data of that shape (interleaved repeats, medians)
and the winner is cached in memory and in a JSON file per machine fingerprint
(entmtp.machine: CPU model, kernel path, torch version, threads), under the
entmtp cache dir (`$ENTMTP_HOME/gemm/`). ENTMTP_GEMM=ours|onednn forces one backend.
Only bf16 x is a choice: fp32 x with bf16 weights always takes ours (oneDNN
would need an fp32 copy of the weights).
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from entmtp import machine
from entmtp.errors import EntmtpError
from entmtp.model.registry import cache_root
from entmtp.timing import interleaved, seconds_per_call

OURS, ONEDNN = "ours", "onednn"
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_plan: Dict[str, str] = {}
_loaded = False


def row_bucket(m: int) -> int:
    """Smallest measured row count >= m (512 for anything longer)."""
    for b in BUCKETS:
        if m <= b:
            return b
    return BUCKETS[-1]


def _plan_file() -> Path:
    return cache_root() / "gemm" / f"{machine.fingerprint()}.json"


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        _plan.update(json.loads(_plan_file().read_text()))
    except (OSError, ValueError):
        pass


def _save() -> None:
    try:
        path = _plan_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_plan, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs a re-measurement next run


def measure(n: int, k: int, m: int, repeats: int = 7) -> Tuple[float, float]:
    """Median seconds of (ours, oneDNN) for x [m, k] bf16 @ w [n, k] bf16, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    samples = interleaved({OURS: lambda: seconds_per_call(lambda: torch.ops.entmtp.linear_bf16w(x, w, None), "cpu"),
                           ONEDNN: lambda: seconds_per_call(lambda: F.linear(x, w), "cpu")}, repeats)
    return statistics.median(samples[OURS]), statistics.median(samples[ONEDNN])


def choose(m: int, n: int, k: int) -> str:
    forced = os.environ.get("ENTMTP_GEMM", "auto")
    if forced in (OURS, ONEDNN):
        return forced
    if forced != "auto":
        raise EntmtpError(f"ENTMTP_GEMM must be auto, {OURS} or {ONEDNN}, not {forced!r}")
    _load()
    key = f"{n}x{k}@{row_bucket(m)}"
    got = _plan.get(key)
    if got is None:
        if torch.compiler.is_compiling():
            return OURS  # never time inside a trace
        ours, dnn = measure(n, k, row_bucket(m))
        got = _plan[key] = OURS if ours <= dnn else ONEDNN
        _save()
    return got


def tune(shapes: "list[tuple[int, int]]", repeats: int = 7) -> Dict[str, Tuple[float, float]]:
    """Re-measure every row bucket of these (N, K) weight shapes now (say, on a quiet
    machine) and cache the winners; returns {key: (ours s, oneDNN s)}."""
    _load()
    timings = {}
    for n, k in shapes:
        for m in BUCKETS:
            ours, dnn = measure(n, k, m, repeats)
            key = f"{n}x{k}@{m}"
            _plan[key] = OURS if ours <= dnn else ONEDNN
            timings[key] = (ours, dnn)
    _save()
    return timings


def plan() -> Dict[str, str]:
    """The backend chosen so far per "NxK@rows" (this process's and the cached ones)."""
    _load()
    return dict(_plan)


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for bf16 CPU weights, by the measured backend."""
    if x.dtype == torch.bfloat16 and choose(x.shape[0], weight.shape[0], weight.shape[1]) == ONEDNN:
        return F.linear(x, weight, bias)
    return torch.ops.entmtp.linear_bf16w(x, weight, bias)
