"""Which bf16-weight GEMM to run on CPU: torch's oneDNN `F.linear` or our
`torch.ops.entmtp.linear_bf16w`, per weight shape and row count.

Neither wins everywhere: measured on a 2-core Sapphire Rapids, ours (AMX tiles)
is about 2x faster from 1 to 32 rows, oneDNN from about 64-128 rows on; on
AVX2-only CPUs torch's bf16 matmul has no native path at all. So the choice is
measured, never guessed (entmtp.model.autotune): per (N, K, row bucket), cached
per machine. ENTMTP_GEMM=ours|onednn forces one backend. Only bf16 x is a
choice: fp32 x with bf16 weights always takes ours (oneDNN would need an fp32
copy of the weights), so fp32 exactness checks never depend on it.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from entmtp.model.autotune import MeasuredChoice, time_backends

OURS, ONEDNN = "ours", "onednn"
# Row counts measured: powers of two, plus the multiples of 16 to 96 (the AMX kernel works in
# 16-row blocks, so 65 rows cost like 80, not like 128).
BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 256, 512)
CHOICE = MeasuredChoice("gemm", (OURS, ONEDNN), env="ENTMTP_GEMM", default=OURS)


def row_bucket(m: int) -> int:
    """Smallest measured row count >= m (512 for anything longer)."""
    for b in BUCKETS:
        if m <= b:
            return b
    return BUCKETS[-1]


def measure(n: int, k: int, m: int, repeats: int = 7) -> Dict[str, float]:
    """Median seconds of each backend for x [m, k] bf16 @ w [n, k] bf16, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    return time_backends({OURS: lambda: torch.ops.entmtp.linear_bf16w(x, w, None),
                          ONEDNN: lambda: F.linear(x, w)}, repeats)


# (ENTMTP_GEMM, m, n, k) -> backend: the per-call lookup of the decode loop (121 calls a
# step for the default model) without rebuilding the key.
_memo: Dict[tuple, str] = {}


def choose(m: int, n: int, k: int) -> str:
    memo_key = (os.environ.get(CHOICE.env), m, n, k)
    got = _memo.get(memo_key)
    if got is None:
        bucket = row_bucket(m)
        got = CHOICE.choose(f"{n}x{k}@{bucket}", lambda: measure(n, k, bucket))
        if not torch.compiler.is_compiling():
            _memo[memo_key] = got
    return got


def tune(shapes: Sequence[Tuple[int, int]], repeats: int = 7) -> Dict[str, Dict[str, float]]:
    """Re-measure every row bucket of these (N, K) weight shapes now (say, on a quiet
    machine) and cache the winners; returns {key: {backend: seconds}}."""
    timings = {}
    for n, k in shapes:
        for m in BUCKETS:
            key = f"{n}x{k}@{m}"
            timings[key] = measure(n, k, m, repeats)
            CHOICE.record(key, timings[key])
    _memo.clear()
    return timings


def plan() -> Dict[str, str]:
    return CHOICE.plan()


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for bf16 CPU weights, by the measured backend."""
    if x.dtype == torch.bfloat16 and choose(x.shape[0], weight.shape[0], weight.shape[1]) == ONEDNN:
        return F.linear(x, weight, bias)
    return torch.ops.entmtp.linear_bf16w(x, weight, bias)
