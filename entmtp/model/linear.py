"""Which bf16-weight GEMM to run on CPU: torch's oneDNN `F.linear` or our
`torch.ops.entmtp.linear_bf16w`, per weight shape and row count.

Neither wins everywhere: measured on a 2-core Sapphire Rapids, ours (AMX tiles)
is about 2x faster from 1 to 32 rows, oneDNN from about 64-128 rows on; on
AVX2-only CPUs torch's bf16 matmul has no native path at all. So the choice is
measured, never guessed (entmtp.model.autotune): per (N, K, row bucket), cached
per machine; a decoder layer's matrices share one choice per row count
(choose_group). ENTMTP_GEMM=ours|onednn forces one backend. Only bf16 x is a
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
# Row counts measured: every count to 32, the multiples of 8 to 128, then 256 and 512. A tree
# of n nodes verifies n + 1 rows, and the winner changes inside a power-of-two bucket: measured
# on a 2-core Zen4 (avx512bf16), ours won every default-model shape at 17 rows (gate_up 120 vs
# 147 us) but oneDNN won gate_up and the LM head at 32, so with a bucket of 32 a 16-node step ran
# those on oneDNN and left the one-op layer loop (15.2 -> 17.6 ms to verify). Every count to 32
# costs little: a key is measured once per machine, at first use.
BUCKETS = tuple(range(1, 33)) + tuple(range(40, 129, 8)) + (256, 512)
CHOICE = MeasuredChoice("gemm", (OURS, ONEDNN), env="ENTMTP_GEMM", default=OURS)


def row_bucket(m: int) -> int:
    """Smallest measured row count >= m (512 for anything longer)."""
    for b in BUCKETS:
        if m <= b:
            return b
    return BUCKETS[-1]


def measure(n: int, k: int, m: int, repeats: int = 7) -> Dict[str, float]:
    """Median seconds of each backend for x [m, k] bf16 @ w [n, k] bf16, interleaved."""
    return measure_group(((n, k),), m, repeats)


def measure_group(shapes: Sequence[Tuple[int, int]], m: int, repeats: int = 7) -> Dict[str, float]:
    """Median seconds of each backend running x [m, k] @ w [n, k] for every (n, k) of
    `shapes` in turn (bf16), interleaved."""
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=g).bfloat16(), (torch.randn(n, k, generator=g) * 0.05).bfloat16())
             for n, k in shapes]

    def ours():
        for x, w in pairs:
            torch.ops.entmtp.linear_bf16w(x, w, None)

    def onednn():
        for x, w in pairs:
            F.linear(x, w)

    return time_backends({OURS: ours, ONEDNN: onednn}, repeats)


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


def choose_group(m: int, shapes: Tuple[Tuple[int, int], ...]) -> str:
    """One backend for all of `shapes` at m rows (a decoder layer's matrices), measured on
    their sum. Why not per shape: a forward that mixes the two backends leaves the one-op
    layer loop (entmtp.model.llama, decoder_layers runs our GEMMs only), and that costs more
    than a narrow per-shape win: measured on a 2-core Zen4 (avx512bf16), 25 rows, gate_up
    alone on oneDNN (215 vs 230 us in isolation) made a 24-node verify 18.4 -> 19.8-20.2 ms."""
    memo_key = (os.environ.get(CHOICE.env), m, shapes)
    got = _memo.get(memo_key)
    if got is None:
        bucket = row_bucket(m)
        name = "+".join(f"{n}x{k}" for n, k in shapes)
        got = CHOICE.choose(f"{name}@{bucket}", lambda: measure_group(shapes, bucket))
        if not torch.compiler.is_compiling():
            _memo[memo_key] = got
    return got


def tune(shapes: Sequence[Tuple[int, int]], repeats: int = 7,
         groups: Sequence[Tuple[Tuple[int, int], ...]] = ()) -> Dict[str, Dict[str, float]]:
    """Re-measure every row bucket of these (N, K) weight shapes and of these groups
    (choose_group) now (say, on a quiet machine) and cache the winners; returns
    {key: {backend: seconds}}."""
    timings = {}
    for group in [((n, k),) for n, k in shapes] + [tuple(g) for g in groups]:
        name = "+".join(f"{n}x{k}" for n, k in group)
        for m in BUCKETS:
            key = f"{name}@{m}"
            timings[key] = measure_group(group, m, repeats)
            CHOICE.record(key, timings[key])
    _memo.clear()
    return timings


def plan() -> Dict[str, str]:
    return CHOICE.plan()


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                backend: Optional[str] = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for bf16 CPU weights, by `backend` (a caller's
    choose_group) or else the backend measured for this shape."""
    if x.dtype == torch.bfloat16:
        if backend is None:
            backend = choose(x.shape[0], weight.shape[0], weight.shape[1])
        if backend == ONEDNN:
            return F.linear(x, weight, bias)
    return torch.ops.entmtp.linear_bf16w(x, weight, bias)
