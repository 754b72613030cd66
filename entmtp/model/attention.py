"""The attention of T new tokens over L committed ones, for one forward: our
`ops.tree_attention` or torch's `scaled_dot_product_attention` with the tree as a
dense mask, whichever measured faster here for the shape (entmtp.model.autotune).

Measured on a 2-core Sapphire Rapids (bf16, 9 query / 3 kv heads of 64): ours is
2-3x faster for one token (the plain decoding step: no mask to build, no GEMM to
set up), torch's (oneDNN GEMMs, AMX) 1.5x at 16 tree tokens and 2.5-3.5x at 64-512
(trees, prefill). Where ours would let the model run its layer loop as one op
(entmtp.model.llama), the model measures a whole layer each way instead (choose_layer).
On CUDA the op's own kernel always runs.
ENTMTP_ATTENTION=ours|sdpa forces one.
"""
from __future__ import annotations

import weakref
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from entmtp import ops
from entmtp.model.autotune import MeasuredChoice, time_backends
from entmtp.reference import dense_mask_from_tree_bits, tree_bits_from_parents

OURS, SDPA = "ours", "sdpa"
CHOICE = MeasuredChoice("attention", (OURS, SDPA), env="ENTMTP_ATTENTION", default=OURS)
_T_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_L_BUCKETS = (0, 128, 256, 512, 1024, 2048, 4096, 8192)
# A whole layer's cost steps with the GEMM tiles, so its choice is measured at every T to 32:
# with T bucketed to 32, a 17-token tree on the Sapphire Rapids got SDPA (measured at 32),
# though the one-op loop with ours ran the 17 tokens faster (19.95 vs 21.25 ms a verify).
_LAYER_T_BUCKETS = tuple(range(1, 33)) + tuple(range(40, 129, 8)) + (256, 512, 1024, 2048)


def _bucket(value: int, buckets) -> int:
    return next((b for b in buckets if value <= b), buckets[-1])


class StepAttention:
    """What every layer of one forward shares: the backend and, for SDPA, the
    additive mask [T, L + T] (built once per forward, not per layer)."""

    def __init__(self, backend: str, tree_bits: Optional[torch.Tensor], cache_len: int, n_new: int,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        self.backend, self.tree_bits = backend, tree_bits
        # Prefill (no tree, nothing cached): SDPA's own causal path needs no mask.
        self.is_causal = backend == SDPA and tree_bits is None and cache_len == 0
        self.mask = None
        if backend == SDPA and not self.is_causal:
            # Additive (0 / -inf) in the compute dtype: SDPA would convert a bool mask with a
            # `where` in every layer (2 of them per call, measured ~1.5 ms a 64-node step).
            # The prefix is all visible; the [T, T] tree block is the same every step of a tree.
            block = _tree_block(tree_bits, n_new, dtype, device)
            self.mask = torch.cat([torch.zeros(n_new, cache_len, dtype=dtype, device=device), block], dim=1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q [B, T, Hq, D]; k, v [B, Hkv, L + T, D] -> [B, T, Hq, D] contiguous."""
        if self.backend == OURS:
            return ops.tree_attention(q, k, v, self.tree_bits, scale)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=self.mask, is_causal=self.is_causal,
                                             scale=scale, enable_gqa=k.shape[1] != q.shape[2])
        return out.transpose(1, 2).contiguous()


# id(tree_bits) -> (a weak reference to it, {(dtype, device): additive block [T, T]}). A
# tree's bits live in its TreeBuffers, built once, so the block is built once per tree.
_BLOCKS: Dict[int, tuple] = {}


def _tree_block(tree_bits: Optional[torch.Tensor], n_new: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """Additive mask [T, T] among the new tokens: 0 where a node sees an ancestor or
    itself (the tree; causal without one), -inf elsewhere."""
    if tree_bits is None:
        visible = torch.ones(n_new, n_new, dtype=torch.bool, device=device).tril()
        return torch.zeros(n_new, n_new, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
    entry = _BLOCKS.get(id(tree_bits))
    if entry is None or entry[0]() is not tree_bits:  # new bits, or an old id reused
        if len(_BLOCKS) > 256:
            _BLOCKS.clear()
        entry = _BLOCKS[id(tree_bits)] = (weakref.ref(tree_bits), {})
    blocks = entry[1]
    block = blocks.get((dtype, device))
    if block is None:
        visible = dense_mask_from_tree_bits(tree_bits.to(device), 0)
        block = blocks[(dtype, device)] = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(
            ~visible, float("-inf"))
    return block


def choose(n_new: int, cache_len: int, n_q: int, n_kv: int, head_dim: int, dtype: torch.dtype) -> str:
    t, length = _bucket(n_new, _T_BUCKETS), _bucket(cache_len, _L_BUCKETS)
    key = f"{n_q}/{n_kv}x{head_dim}:{str(dtype).removeprefix('torch.')}:T{t}:L{length}"
    return CHOICE.choose(key, lambda: measure(t, length, n_q, n_kv, head_dim, dtype))


def choose_layer(layer_key: str, n_new: int, cache_len: int, measure_layer) -> str:
    """The backend for a forward whose layer loop runs as one op with ours (and as a Python
    loop with SDPA): measure_layer(T, L) -> {backend: seconds} times one whole layer of the
    model each way, at the buckets' sizes."""
    t, length = _bucket(n_new, _LAYER_T_BUCKETS), _bucket(cache_len, _L_BUCKETS)
    return CHOICE.choose(f"layer {layer_key}:T{t}:L{length}", lambda: measure_layer(t, length))


def measure(n_new: int, cache_len: int, n_q: int, n_kv: int, head_dim: int, dtype: torch.dtype,
            repeats: int = 5) -> Dict[str, float]:
    """Median seconds of each backend on random data of this shape, with a bushy
    tree mask (each node under one of the 4 before it; causal for a prefill)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, n_new, n_q, head_dim, generator=g).to(dtype)
    k = torch.randn(1, n_kv, cache_len + n_new, head_dim, generator=g).to(dtype)
    v = torch.randn(1, n_kv, cache_len + n_new, head_dim, generator=g).to(dtype)
    bits = None
    if cache_len > 0 or n_new == 1:
        parents = torch.tensor([-1] + [max(0, i - 4) for i in range(1, n_new)])
        bits = tree_bits_from_parents(parents)
    scale = head_dim ** -0.5
    steps = {backend: StepAttention(backend, bits, cache_len, n_new, q.device, dtype) for backend in (OURS, SDPA)}
    return time_backends({backend: (lambda s=step: s(q, k, v, scale)) for backend, step in steps.items()}, repeats)


def plan() -> Dict[str, str]:
    return CHOICE.plan()
