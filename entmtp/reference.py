"""Pure-torch references of the entmtp ops: the specification the C++/CUDA
kernels in csrc/ are tested against (tests/test_ops_*.py), plus the tree-mask
helpers. Written for clarity, not speed.

Tree conventions (Medusa's): nodes 0..T-1 in topological order, node 0 is the
root (the last committed token), parents[0] = -1 and parents[i] < i otherwise.
A tree mask is an ancestor-or-self bitmask, int64 [T, W] with W = ceil(T/64):
bit j % 64 of word j // 64 in row i is set iff new token i may attend to new
token j. Bit 63 is the int64 sign bit, so words can be negative.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

_BITS = 64


def _words(n: int) -> int:
    return max(1, math.ceil(n / _BITS))


def _pack_bits(dense: Tensor) -> Tensor:
    """bool [T, n] -> int64 [T, ceil(n/64)] (bit j % 64 of word j // 64)."""
    rows, n = dense.shape
    padded = torch.zeros(rows, _words(n) * _BITS, dtype=torch.int64, device=dense.device)
    padded[:, :n] = dense.to(torch.int64)
    shifts = torch.arange(_BITS, dtype=torch.int64, device=dense.device)
    # Distinct powers of two: the int64 sum wraps exactly into bit 63.
    return (padded.view(rows, -1, _BITS) << shifts).sum(-1)


def tree_bits_from_parents(parents: Tensor) -> Tensor:
    """Ancestor-or-self bitmask int64 [T, W] of the tree given by parents [T]."""
    parent_list = [int(p) for p in parents.tolist()]
    n = len(parent_list)
    if n == 0 or parent_list[0] != -1:
        raise ValueError("parents[0] must be -1 (the root)")
    dense = torch.zeros(n, n, dtype=torch.bool)
    dense[0, 0] = True
    for i in range(1, n):
        p = parent_list[i]
        if not 0 <= p < i:
            raise ValueError(f"parents[{i}] = {p} must lie in [0, {i})")
        dense[i] = dense[p]
        dense[i, i] = True
    return _pack_bits(dense).to(parents.device)


def causal_tree_bits(n: int, device: torch.device | str = "cpu") -> Tensor:
    """Bitmask [n, W] of a chain (token i sees tokens 0..i): causal attention."""
    dense = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return _pack_bits(dense)


def dense_mask_from_tree_bits(tree_bits: Tensor, prefix_len: int) -> Tensor:
    """bool [T, L + T]: the prefix columns are all visible, then the tree block."""
    n = tree_bits.shape[0]
    shifts = torch.arange(_BITS, dtype=torch.int64, device=tree_bits.device)
    tree = ((tree_bits.unsqueeze(-1) >> shifts) & 1).bool().view(n, -1)[:, :n]
    prefix = torch.ones(n, prefix_len, dtype=torch.bool, device=tree_bits.device)
    return torch.cat([prefix, tree], dim=1)


def _compute_dtype(dtype: torch.dtype, asked: Optional[torch.dtype]) -> torch.dtype:
    # Default: at least fp32 (fp64 inputs stay fp64, for error baselines).
    return asked if asked is not None else torch.promote_types(dtype, torch.float32)


def tree_attention_ref(q: Tensor, k: Tensor, v: Tensor, tree_bits: Optional[Tensor], scale: float,
                       compute_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Spec of `ops.tree_attention`: explicit masked softmax.

    q [B, T, Hq, D]; k, v [B, Hkv, L + T, D] (the last T keys are the new
    tokens); tree_bits int64 [T, W] or None (causal among the new tokens).
    Query head h uses kv head h // (Hq / Hkv). A query with no visible key gets
    zeros. Computed in `compute_dtype` (default: fp32, or fp64 for fp64
    inputs; pass q.dtype for the low-precision baseline), returned in q's dtype
    as a new contiguous [B, T, Hq, D] tensor.
    """
    out_dtype = q.dtype
    cd = _compute_dtype(q.dtype, compute_dtype)
    n_new, n_q, n_kv = q.shape[1], q.shape[2], k.shape[1]
    prefix = k.shape[2] - n_new
    bits = tree_bits if tree_bits is not None else causal_tree_bits(n_new, q.device)
    mask = dense_mask_from_tree_bits(bits.to(q.device), prefix)  # [T, Lk]
    qh = q.to(cd).transpose(1, 2)  # [B, Hq, T, D]
    kh = k.to(cd).repeat_interleave(n_q // n_kv, dim=1)  # [B, Hq, Lk, D]
    vh = v.to(cd).repeat_interleave(n_q // n_kv, dim=1)
    scores = (qh @ kh.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
    return (probs @ vh).transpose(1, 2).to(out_dtype).contiguous()


def token_entropy_ref(logits: Tensor, k: int = 0, compute_dtype: Optional[torch.dtype] = None
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Spec of `ops.token_entropy` for logits [N, V].

    Returns entropy (nats) f32 [N], argmax i64 [N] (lowest index on ties),
    max_prob f32 [N], topk_ids i64 [N, k] (descending, lowest index first among
    equal logits) and topk_probs f32 [N, k]. -inf logits are masked vocab
    entries (probability 0, no entropy contribution); a row of only -inf gives
    NaN entropy and probabilities (like torch.softmax) and argmax 0. Computed
    in `compute_dtype` (default fp32, fp64 for fp64 logits).
    """
    x = logits.to(_compute_dtype(logits.dtype, compute_dtype))
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    dead = torch.isneginf(x).all(-1)
    entropy = torch.where(dead, torch.full_like(entropy, float("nan")), entropy)
    max_prob = p.max(-1).values
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k]
    topk_probs = torch.gather(p, -1, order)
    f32 = torch.float32
    return entropy.to(f32), logits.argmax(-1), max_prob.to(f32), order, topk_probs.to(f32)


def tree_accept_ref(node_tokens: Tensor, parents: Tensor, target_ids: Tensor, max_depth: int,
                    draft_probs: Optional[Tensor] = None, entropy: Optional[Tensor] = None,
                    epsilon: float = 0.09, alpha: float = 0.3) -> Tuple[Tensor, Tensor, Tensor]:
    """Spec of `ops.tree_accept`.

    Node 0 is the root; node i > 0 drafted node_tokens[i] under parent
    parents[i]; target_ids[j] is the base model's token after node j (argmax
    for greedy decoding; the token the caller would emit otherwise).

    - greedy (draft_probs is None): node i passes iff
      node_tokens[i] == target_ids[parents[i]];
    - typical (Medusa's rule): node i passes iff
      draft_probs[i] > min(epsilon, alpha * exp(-entropy[parents[i]])), where
      draft_probs[i] = p_parent(node_tokens[i]) is the probability of the
      drafted token under the (temperature-scaled) base distribution at its
      parent node and entropy[j] is that distribution's entropy at node j (nats).

    A node is accepted iff it passes and its parent is accepted (the root always
    is). Returns path int64 [max_depth + 1] (root to the deepest accepted node,
    lowest index on ties, padded with -1), accept_len int64 [] (number of
    accepted drafted tokens) and bonus int64 [] = target_ids[last path node].
    """
    toks, pars, tgt = node_tokens.tolist(), parents.tolist(), target_ids.tolist()
    depth = [0] + [-1] * (len(toks) - 1)
    best = 0
    for i in range(1, len(toks)):
        p = pars[i]
        if draft_probs is None:
            passes = toks[i] == tgt[p]
        else:
            threshold = min(epsilon, alpha * math.exp(-float(entropy[p])))
            passes = float(draft_probs[i]) > threshold
        if passes and depth[p] >= 0:
            depth[i] = depth[p] + 1
            if depth[i] > depth[best]:
                best = i
    path = [-1] * (max_depth + 1)
    node = best
    for d in range(depth[best], -1, -1):
        path[d] = node
        node = pars[node]
    dev = node_tokens.device
    return (torch.tensor(path, dtype=torch.int64, device=dev),
            torch.tensor(depth[best], dtype=torch.int64, device=dev),
            torch.tensor(tgt[best], dtype=torch.int64, device=dev))


def linear_bf16w_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Spec of torch.ops.entmtp.linear_bf16w: x [M, K] @ weight[N, K].T (+ bias [N])
    in x's dtype (the bf16 weights and bias are widened to it) -> [M, N]."""
    return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


# GGUF block formats of linear_quant (qtype -> (name, bytes per 32-weight block)).
QTYPES = {0: ("q4_1", 20), 1: ("q8_0", 34)}


def dequantize_ref(weight: Tensor, qtype: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 GGUF blocks [N, K / 32 * block bytes] -> fp32 [N, K].

    Q4_1 (qtype 0): fp16 d, fp16 m, 16 bytes q; weight j = d * q_j + m, q_j the
    low nibble of byte j (j < 16) or the high nibble of byte j - 16, rounded to
    fp32 once (computed in float64, where it is exact: the kernels' FMA).
    Q8_0 (qtype 1): fp16 d, 32 int8 q; weight j = d * q_j (exact in fp32).
    dtype=torch.float64 keeps the exact values.
    """
    _, nbytes = QTYPES[qtype]
    n = weight.shape[0]
    blocks = weight.reshape(n, -1, nbytes)                           # [N, K/32, bytes]
    d = blocks[..., 0:2].contiguous().view(torch.float16).double()  # [N, K/32, 1]
    if qtype == 0:
        m = blocks[..., 2:4].contiguous().view(torch.float16).double()
        qs = blocks[..., 4:20].long()                                 # [N, K/32, 16]
        q = torch.cat([qs & 15, qs >> 4], dim=-1).double()            # [N, K/32, 32]
        values = d * q + m
    else:
        q = blocks[..., 2:34].contiguous().view(torch.int8).double()
        values = d * q
    return values.to(dtype).reshape(n, -1)


def linear_quant_ref(x: Tensor, weight: Tensor, qtype: int, bias: Optional[Tensor] = None) -> Tensor:
    """Spec of torch.ops.entmtp.linear_quant: x [M, K] @ dequantize_ref(weight).T (+ bias [N]),
    in x's dtype -> [M, N] (the kernels accumulate in fp32; with bf16 x they round
    the dequantized weights to bf16 first, like a bf16 copy of the same weights)."""
    w = dequantize_ref(weight, qtype)
    if x.dtype == torch.bfloat16:
        w = w.bfloat16()
    return torch.nn.functional.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))


def quantize_activations_ref(x: Tensor) -> Tensor:
    """What linear_quant's int8 kernel multiplies for x [M, K]: per 32-column block,
    dx = max |x| / 127 and qx = x * (127 / max |x|) rounded to nearest even (fp32),
    returned as the float64 values dx * qx [M, K]."""
    m = x.shape[0]
    xb = x.float().reshape(m, -1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    # 127 / max |x| correctly rounded to fp32, like the kernels' division (torch's own
    # fp32 division can be an ulp off, which moves a near-tie qx by one).
    inv = torch.where(amax > 0, (127.0 / amax.double()).float(), torch.zeros_like(amax))
    q = torch.round(xb * inv)
    dx = (amax.double() / 127.0).float().double()  # fp32, correctly rounded
    return (q.double() * dx).reshape(m, -1)


def linear_quant_int8_ref(x: Tensor, weight: Tensor, qtype: int, bias: Optional[Tensor] = None) -> Tensor:
    """Spec of linear_quant's int8 path (bf16 x of at most
    torch.ops.entmtp.linear_quant_int8_rows() rows): the
    int8-rounded activations against the exact dequantized weights, in float64 [M, N]."""
    w = dequantize_ref(weight, qtype, torch.float64)
    out = quantize_activations_ref(x) @ w.t()
    return out if bias is None else out + bias.double()


def kv_commit_ref(kv: Tensor, src_slots: Tensor, dst_start: int) -> None:
    """Spec of `ops.kv_commit`, in place on kv [n_layers, 2, B, Hkv, S_max, D]:
    slot src_slots[i] -> slot dst_start + i for every layer, K/V, batch, head."""
    for i, src in enumerate(src_slots.tolist()):
        kv[:, :, :, :, dst_start + i] = kv[:, :, :, :, src].clone()


# ---- fused decoder-layer pieces (CPU ops rms_norm, add_rms_norm, rotary_qkv,
# silu_mul); on other devices the model runs these composites directly.

def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x [M, H] -> weight * x / rms(x); variance in fp32, as Llama's reference does."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_ref(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual): the residual add fused with the next norm."""
    summed = x + residual
    return rms_norm_ref(summed, weight, eps), summed


def rope_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE: x [..., D] with cos/sin broadcastable to it."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rotary_qkv_ref(qkv: Tensor, cos: Tensor, sin: Tensor, n_q_heads: int, n_kv_heads: int,
                   k_cache: Tensor, v_cache: Tensor, start: int) -> Tensor:
    """qkv [M = B*T, (Hq + 2 Hkv) D], cos/sin [M, D], caches [B, Hkv, S, D].

    Writes RoPE'd k and plain v into cache slots [start, start + T); returns
    RoPE'd q [M, Hq, D].
    """
    batch, _, _, dim = k_cache.shape
    rows = qkv.shape[0]
    steps = rows // batch
    q, k, v = qkv.split([n_q_heads * dim, n_kv_heads * dim, n_kv_heads * dim], dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [M, 1, D]
    q = rope_ref(q.reshape(rows, n_q_heads, dim), cos, sin)
    k = rope_ref(k.reshape(rows, n_kv_heads, dim), cos, sin)
    k_cache[:, :, start:start + steps] = k.view(batch, steps, n_kv_heads, dim).transpose(1, 2)
    v_cache[:, :, start:start + steps] = v.reshape(batch, steps, n_kv_heads, dim).transpose(1, 2)
    return q


def silu_mul_ref(gate_up: Tensor) -> Tensor:
    """gate_up [M, 2I] = [gate | up] -> SiLU(gate) * up [M, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
