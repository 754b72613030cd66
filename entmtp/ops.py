"""The entmtp custom ops: thin wrappers over torch.ops.entmtp.* (C++/CUDA
kernels in csrc/), with fake implementations so that they trace under
torch.compile(fullgraph=True). The specification of each op is its pure-torch
reference in entmtp/reference.py.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from entmtp import _C  # noqa: F401  (loading the library registers torch.ops.entmtp.*)

_OPS = ("tree_attention", "token_entropy", "tree_accept", "kv_commit")


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"entmtp::{name}", "CUDA") for name in _OPS)


# --------------------------------------------------------------------------- #
# Fake (meta) implementations: shapes and dtypes only
# --------------------------------------------------------------------------- #

@torch.library.register_fake("entmtp::tree_attention")
def _tree_attention_fake(q, k, v, tree_bits, scale):
    return q.new_empty(q.shape)  # contiguous [B, T, Hq, D]


@torch.library.register_fake("entmtp::token_entropy")
def _token_entropy_fake(logits, k=0):
    n = logits.shape[0]
    f32, i64 = torch.float32, torch.int64
    return (logits.new_empty((n,), dtype=f32), logits.new_empty((n,), dtype=i64),
            logits.new_empty((n,), dtype=f32), logits.new_empty((n, k), dtype=i64),
            logits.new_empty((n, k), dtype=f32))


@torch.library.register_fake("entmtp::tree_accept")
def _tree_accept_fake(node_tokens, parents, target_ids, max_depth, draft_probs=None, entropy=None,
                      epsilon=0.09, alpha=0.3):
    return (node_tokens.new_empty((max_depth + 1,)), node_tokens.new_empty(()),
            node_tokens.new_empty(()))


@torch.library.register_fake("entmtp::linear_bf16w")
def _linear_bf16w_fake(x, weight, bias=None):
    return x.new_empty((x.shape[0], weight.shape[0]))  # [M, N] in x's dtype (csrc/cpu/linear_bf16w_cpu.cpp)


@torch.library.register_fake("entmtp::linear_quant")
def _linear_quant_fake(x, weight, qtype, bias=None):
    return x.new_empty((x.shape[0], weight.shape[0]))  # [M, N] in x's dtype (csrc/cpu/linear_quant_cpu.cpp)


@torch.library.register_fake("entmtp::kv_commit")
def _kv_commit_fake(kv, src_slots, dst_start):
    return None


@torch.library.register_fake("entmtp::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.register_fake("entmtp::add_rms_norm")
def _add_rms_norm_fake(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.register_fake("entmtp::rotary_qkv")
def _rotary_qkv_fake(qkv, cos, sin, n_q_heads, n_kv_heads, k_cache, v_cache, start):
    return qkv.new_empty((qkv.shape[0], n_q_heads, k_cache.shape[-1]))


@torch.library.register_fake("entmtp::silu_mul")
def _silu_mul_fake(gate_up):
    return gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))


# --------------------------------------------------------------------------- #
# Wrappers
# --------------------------------------------------------------------------- #

def tree_attention(q: Tensor, k: Tensor, v: Tensor, tree_bits: Optional[Tensor], scale: float) -> Tensor:
    """Attention of T new tokens over a committed prefix plus themselves.

    q [B, T, Hq, D] (any strides, last dim contiguous); k, v [B, Hkv, L + T, D]
    (cache slices: the first L keys are the committed prefix, visible to all;
    the last T are the new tokens); tree_bits int64 [T, ceil(T/64)]
    ancestor-or-self bitmask shared across the batch, or None for causal.
    Returns a new contiguous [B, T, Hq, D] tensor of q's dtype.
    """
    if tree_bits is not None and tree_bits.device != q.device:
        tree_bits = tree_bits.to(q.device, non_blocking=True)
    return torch.ops.entmtp.tree_attention.default(q, k, v, tree_bits, float(scale))


def token_entropy(logits: Tensor, k: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Softmax statistics of logits [N, V] in one pass (softmax never stored).

    Returns (entropy f32 [N] in nats, argmax i64 [N], max_prob f32 [N],
    topk_ids i64 [N, k], topk_probs f32 [N, k]); 0 <= k <= 16.
    """
    return torch.ops.entmtp.token_entropy.default(logits, k)


def tree_accept(node_tokens: Tensor, parents: Tensor, target_ids: Tensor, max_depth: int,
                draft_probs: Optional[Tensor] = None, entropy: Optional[Tensor] = None,
                epsilon: float = 0.09, alpha: float = 0.3) -> Tuple[Tensor, Tensor, Tensor]:
    """Accepted path of a verified draft tree, computed on the inputs' device.

    node_tokens, parents, target_ids: int64 [T] (node 0 = root, parents[0] = -1,
    parents[i] < i). Greedy when draft_probs is None: node i passes iff
    node_tokens[i] == target_ids[parents[i]]. Typical acceptance otherwise:
    node i passes iff draft_probs[i] > min(epsilon, alpha * exp(-entropy[parents[i]]))
    with draft_probs f32 [T] (p of node i's token under its parent's
    distribution) and entropy f32 [T] (nats, per node). Returns
    (path i64 [max_depth + 1] padded with -1, accept_len i64 [], bonus i64 []);
    see reference.tree_accept_ref. Reading accept_len is the caller's one sync.
    """
    return torch.ops.entmtp.tree_accept.default(node_tokens, parents, target_ids, max_depth, draft_probs,
                                                entropy, float(epsilon), float(alpha))


def kv_commit(kv: Tensor, src_slots: Tensor, dst_start: int) -> None:
    """In place: kv[..., dst_start + i, :] = kv[..., src_slots[i], :] for all
    layers, K/V, batch rows and heads of kv [n_layers, 2, B, Hkv, S_max, D].

    src_slots int64 [n], strictly increasing, src_slots[i] >= dst_start + i;
    on the CPU or on kv's device (CPU slots are moved over first). Values are
    validated on the CPU; on CUDA an out-of-range slot is skipped (no sync).
    """
    if src_slots.device != kv.device:
        src_slots = src_slots.to(kv.device, non_blocking=True)
    torch.ops.entmtp.kv_commit.default(kv, src_slots, int(dst_start))
