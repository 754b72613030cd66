"""Draft heads for self-speculative decoding: Medusa heads and Hydra (grounded) heads.

Both read the base model's final hidden state *after* the final RMSNorm, i.e. the
tensor the base ``lm_head`` consumes (as upstream Medusa and Hydra do).

Offsets (the same for Medusa and Hydra): the base ``lm_head`` at position t predicts
token t+1 (the *root* of the draft tree); head i (0-based) at position t predicts
token t+2+i.

Medusa head i (independent of the path):
    x_0 = h_t;  x_{l+1} = x_l + SiLU(W_{i,l} x_l + b_{i,l})  for l < n_layers
    logits_i = LM_i x_L        (LM_i: the head's own [V, H] or the base lm_head)

Hydra head i (grounded: conditioned on the tokens of its path):
    z = concat(h_t, E(x_{t+1}), E(x_{t+2}), ..., E(x_{t+i+1}))     width H * (i + 2)
    y_1 = R_i z + r_i + SiLU(A_i z + a_i)                            [H]
    y_{l+1} = y_l + SiLU(W_{i,l} y_l + b_{i,l})   for the n_layers - 1 plain blocks
    logits_i = LM_i y + c_i    (own [V, H] weight with bias [V]; or the base lm_head)
where x_{t+1} is the root (the base model's own next token), x_{t+2}.. are the
drafted tokens before head i on the path, and E is the base ``embed_tokens``.

Upstream builds repeated blocks by list multiplication, so Medusa with
n_layers > 1 and Hydra's plain blocks share one weight per head. Here every block
owns its weights; loading a shared upstream checkpoint copies the shared tensor into
each slot, which computes exactly the same function.

Files read (the layout is always inferred from tensor names, never from config.json):
  * ours: a directory with ``entmtp_heads.json`` + ``heads.safetensors``;
  * Medusa: ``medusa_lm_head.safetensors`` / ``medusa_lm_head.pt`` (v0.1 with per-head
    lm_heads, or "version 2" without), or a Medusa-2 full checkpoint whose head keys
    carry the ``medusa_head.`` prefix (only those keys are read);
  * Hydra: ``hydra_lm_head.pt`` with ``hydra_head_arch = "mlp"`` or ``"prefix-mlp"``
    (Hydra++, entmtp.heads.prefix), grounded heads, ``hidden_state_offset = 0``. Other
    Hydra variants are rejected, see ``entmtp.heads.upstream._hydra_arch``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from entmtp.defaults import HEAD_KINDS
from entmtp.model.llama import linear
from entmtp.model.quant import QuantizedWeight, embedding

# hydrapp: Hydra++ (entmtp.heads.prefix), grounded Hydra heads behind a prefix decoder layer.
KINDS = HEAD_KINDS


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` in the dtype/device of `like`; a no-op (no copy) when they already match.
    A quantized base weight stays as it is (linear_quant returns `like`'s dtype)."""
    if isinstance(t, QuantizedWeight):
        return t
    return t.to(device=like.device, dtype=like.dtype)


def _topk_probs(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] (any float dtype) -> (ids int64 [R, k], probs fp32 [R, k]), rank order."""
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[-1]}], got {top_k}")
    # Softmax in fp32: bf16 probabilities are too coarse to rank or calibrate on.
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, top_k, dim=-1)
    return top.indices, top.values


def _check_hidden(hidden: torch.Tensor, hidden_size: int, what: str) -> None:
    if hidden.shape[-1] != hidden_size:
        raise ValueError(f"{what} must end in hidden size {hidden_size}, got {tuple(hidden.shape)}")


def _init_bias_(bias: torch.Tensor, fan_in: int) -> None:
    # nn.Linear's default bias init; upstream zero-inits only the weight.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        bias.uniform_(-bound, bound)


def _lm_head_param(n_heads: int, shared: bool, vocab: int, hidden: int,
                   dtype: torch.dtype) -> Optional[nn.Parameter]:
    """Per-head vocab projections [n_heads, V, H], or None when the base lm_head is reused."""
    if shared:
        return None
    return nn.Parameter(torch.zeros(n_heads, vocab, hidden, dtype=dtype))


# --------------------------------------------------------------------------- #
# Medusa
# --------------------------------------------------------------------------- #


class _DraftHeads(nn.Module):
    """Sizes and provenance common to Medusa and Hydra heads."""

    kind: str

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool):
        super().__init__()
        self.n_heads, self.n_layers = n_heads, n_layers
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.shared_lm_head = shared_lm_head
        # {"base_model": {...}, "training": {...}}: written by save_heads, set by load_heads.
        self.metadata: dict[str, Any] = {"base_model": {}, "training": {}}

    def init_lm_heads_from(self, base_lm_head: torch.Tensor) -> None:
        """Copy the base lm_head [V, H] into every per-head projection (the upstream
        Medusa v0.1 and Hydra init); no-op with shared_lm_head."""
        if self.lm_head is not None:
            with torch.no_grad():
                self.lm_head.copy_(base_lm_head.unsqueeze(0).expand_as(self.lm_head))

    def _one_row(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """[H] or [1, H] -> [1, H]."""
        if hidden_last.numel() != self.hidden_size:
            raise ValueError(f"hidden_last must be [H] or [1, H] with H={self.hidden_size}, "
                             f"got {tuple(hidden_last.shape)}")
        return hidden_last.reshape(1, self.hidden_size)


class MedusaHeads(_DraftHeads):
    """Medusa heads; head i at position t predicts token t+2+i.

    Parameters (all heads stacked so a decode step is a few batched matmuls):
      block_weight [n_heads, n_layers, H, H], block_bias [n_heads, n_layers, H];
      lm_head [n_heads, V, H], or None with shared_lm_head (Medusa "version 2").
    """

    kind = "medusa"

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool, dtype: torch.dtype = torch.float32):
        super().__init__(n_heads, n_layers, hidden_size, vocab_size, shared_lm_head)
        H = hidden_size
        # Upstream init: zero block weights (each block starts as the identity).
        self.block_weight = nn.Parameter(torch.zeros(n_heads, n_layers, H, H, dtype=dtype))
        self.block_bias = nn.Parameter(torch.zeros(n_heads, n_layers, H, dtype=dtype))
        _init_bias_(self.block_bias, H)
        self.lm_head = _lm_head_param(n_heads, shared_lm_head, vocab_size, H, dtype)

    def forward(self, hidden: torch.Tensor, base_lm_head: Optional[torch.Tensor]) -> torch.Tensor:
        """hidden [N, H] (post final norm) -> logits [n_heads, N, V], in hidden's dtype.

        base_lm_head [V, H] is used only with shared_lm_head (may be None otherwise).
        """
        _check_hidden(hidden, self.hidden_size, "hidden")
        x = hidden.reshape(1, -1, self.hidden_size).expand(self.n_heads, -1, -1)  # [n, N, H]
        w, b = _as(self.block_weight, hidden), _as(self.block_bias, hidden)
        for layer in range(self.n_layers):
            # [n, N, H] @ [n, H, H] + [n, 1, H]: all heads' block `layer` in one bmm.
            x = x + F.silu(torch.baddbmm(b[:, layer].unsqueeze(1), x, w[:, layer].transpose(1, 2)))
        if self.lm_head is not None:
            lm_heads = _as(self.lm_head, hidden)
            return torch.stack([linear(x[i], lm_heads[i]) for i in range(self.n_heads)])  # [n, N, V]
        if base_lm_head is None:
            raise ValueError("these Medusa heads reuse the base lm_head; pass base_lm_head [V, H]")
        # One [n*N, H] @ [H, V] matmul for all heads.
        n, N, H = x.shape
        return linear(x.reshape(n * N, H), _as(base_lm_head, hidden)).view(n, N, -1)

    def propose(self, hidden_last: torch.Tensor, base_lm_head: Optional[torch.Tensor],
                top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_last [H] or [1, H] -> (ids int64 [n_heads, top_k], probs fp32 [n_heads, top_k]).

        probs are each head's softmax probabilities (over the rows of its LM head) of its
        top-k tokens, in rank order; row i drafts the token at offset +2+i.
        """
        logits = self.forward(self._one_row(hidden_last), base_lm_head)[:, 0]  # [n, V]
        return _topk_probs(logits, top_k)


# --------------------------------------------------------------------------- #
# Hydra
# --------------------------------------------------------------------------- #


class HydraHeads(_DraftHeads):
    """Grounded Hydra heads (``hydra_head_arch = "mlp"``); head i at position t predicts t+2+i.

    Parameters:
      cond_weight[i], res_weight[i] [H, H*(i+2)], cond_bias, res_bias [n_heads, H]:
        the first, conditioned block of each head (upstream ``linear`` / ``res_connection``);
      block_weight [n_heads, n_layers-1, H, H], block_bias [n_heads, n_layers-1, H]:
        the plain residual blocks after it;
      lm_head [n_heads, V, H] + lm_head_bias [n_heads, V], or both None with
        shared_lm_head (then the base lm_head, which has no bias, is used).
    """

    kind = "hydra"

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool, dtype: torch.dtype = torch.float32):
        super().__init__(n_heads, n_layers, hidden_size, vocab_size, shared_lm_head)
        H = hidden_size
        widths = [H * (i + 2) for i in range(n_heads)]
        self.cond_weight = nn.ParameterList(
            [nn.Parameter(torch.zeros(H, w, dtype=dtype)) for w in widths])
        self.res_weight = nn.ParameterList(
            [nn.Parameter(torch.empty(H, w, dtype=dtype)) for w in widths])
        self.cond_bias = nn.Parameter(torch.empty(n_heads, H, dtype=dtype))
        self.res_bias = nn.Parameter(torch.empty(n_heads, H, dtype=dtype))
        self.block_weight = nn.Parameter(torch.zeros(n_heads, n_layers - 1, H, H, dtype=dtype))
        self.block_bias = nn.Parameter(torch.empty(n_heads, n_layers - 1, H, dtype=dtype))
        # nn.Linear defaults for everything but the zero-initialised `linear` weights.
        for i, w in enumerate(widths):
            nn.init.kaiming_uniform_(self.res_weight[i], a=math.sqrt(5))
            _init_bias_(self.cond_bias[i], w)
            _init_bias_(self.res_bias[i], w)
        _init_bias_(self.block_bias, H)
        self.lm_head = _lm_head_param(n_heads, shared_lm_head, vocab_size, H, dtype)
        self.lm_head_bias = None if shared_lm_head else nn.Parameter(
            torch.zeros(n_heads, vocab_size, dtype=dtype))
        if self.lm_head_bias is not None:
            _init_bias_(self.lm_head_bias, H)

    def first_block(self, i: int) -> torch.Tensor:
        """Head i's two first-block matrices stacked, R_i over A_i: [2H, H*(i+2)], what
        forward_paths' `first_block` takes (both read the same z, so one GEMM serves both)."""
        return torch.cat([self.res_weight[i], self.cond_weight[i]], dim=0)

    def forward_paths(self, hidden: torch.Tensor, path_embeds: torch.Tensor, head_index: int,
                      base_lm_head: Optional[torch.Tensor],
                      first_block: Optional[torch.Tensor | QuantizedWeight] = None) -> torch.Tensor:
        """Head `head_index` on P paths -> logits [P, V] in hidden's dtype.

        hidden: [P, H], or [H] / [1, H] shared by all paths: the base hidden state
          (post final norm) at the position t the tree grows from.
        path_embeds: [P, d, H] with d = head_index + 1: base input embeddings of the
          path's tokens in order: [:, 0] = the root x_{t+1} (the base model's next
          token), [:, j] = the drafted token x_{t+1+j}. The head predicts x_{t+2+head_index}.
        The head input is concat(hidden, path_embeds[:, 0], ..., path_embeds[:, d-1])
        (width H*(d+1)), Hydra's order.
        first_block: `self.first_block(head_index)` or a copy of it (drafting passes a Q8_0
          one, entmtp.decode.speculative.draft_blocks_for); None runs R_i and A_i as they are.
        """
        if not 0 <= head_index < self.n_heads:
            raise ValueError(f"head_index must be in [0, {self.n_heads}), got {head_index}")
        H, d = self.hidden_size, head_index + 1
        if path_embeds.dim() != 3 or path_embeds.shape[1:] != (d, H):
            raise ValueError(f"path_embeds for head {head_index} must be [P, {d}, {H}], "
                             f"got {tuple(path_embeds.shape)}")
        _check_hidden(hidden, H, "hidden")
        P = path_embeds.shape[0]
        if hidden.numel() not in (H, P * H):
            raise ValueError(f"hidden must be [H], [1, H] or [{P}, H] for {P} paths, "
                             f"got {tuple(hidden.shape)}")
        z = torch.cat([hidden.reshape(-1, H).expand(P, H),
                       path_embeds.to(hidden.dtype).reshape(P, d * H)], dim=-1)  # [P, H(d+1)]
        i = head_index
        if first_block is None:
            y = (linear(z, _as(self.res_weight[i], hidden), _as(self.res_bias[i], hidden))
                 + F.silu(linear(z, _as(self.cond_weight[i], hidden), _as(self.cond_bias[i], hidden))))
        else:
            both = linear(z, _as(first_block, hidden))                              # [P, 2H]: R z, A z
            y = (both[:, :H] + _as(self.res_bias[i], hidden)
                 + F.silu(both[:, H:] + _as(self.cond_bias[i], hidden)))
        w, b = _as(self.block_weight[i], hidden), _as(self.block_bias[i], hidden)
        for layer in range(self.n_layers - 1):
            y = y + F.silu(linear(y, w[layer], b[layer]))  # [P, H]
        if self.lm_head is not None:
            return linear(y, _as(self.lm_head[i], hidden), _as(self.lm_head_bias[i], hidden))
        if base_lm_head is None:
            raise ValueError("these Hydra heads reuse the base lm_head; pass base_lm_head [V, H]")
        return linear(y, _as(base_lm_head, hidden))

    def propose_level(self, hidden_last: torch.Tensor, path_token_ids: torch.Tensor,
                      embed_weight: torch.Tensor, base_lm_head: Optional[torch.Tensor],
                      top_k: int, first_blocks: Optional[list] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One level of a grounded tree proposal.

        hidden_last [H] or [1, H]; path_token_ids int64 [P, d]: the P frontier paths,
        each root first (so head d-1 runs); embed_weight [V, H]: base embed_tokens;
        first_blocks: per head, forward_paths' `first_block` (None: the module's own).
        Returns (ids int64 [P, top_k], probs fp32 [P, top_k]): each path's children.
        """
        if path_token_ids.dim() != 2:
            raise ValueError(f"path_token_ids must be [P, d], got {tuple(path_token_ids.shape)}")
        embeds = embedding(path_token_ids, embed_weight, hidden_last.dtype)  # [P, d, H]
        head = path_token_ids.shape[1] - 1
        logits = self.forward_paths(self._one_row(hidden_last), embeds, head, base_lm_head,
                                    None if first_blocks is None else first_blocks[head])
        return _topk_probs(logits, top_k)


Heads = Union[MedusaHeads, HydraHeads]
_CLASSES = {"medusa": MedusaHeads, "hydra": HydraHeads}


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


# ---- ours ------------------------------------------------------------------ #


# ---- Medusa ---------------------------------------------------------------- #


# ---- Hydra ----------------------------------------------------------------- #


# ---- dispatch -------------------------------------------------------------- #


