"""A small Llama-family decoder (llama, mistral, qwen2) in plain torch.

One forward serves prefill, single-token decode and tree verification: it takes
token ids, explicit position ids, the committed cache length and an optional
tree mask (ancestor bitmask), writes the new tokens' K/V into the preallocated
cache right after the committed prefix, and attends through entmtp.model.attention
(the `ops.tree_attention` op, or torch's SDPA where that measured faster here).

Weights are plain tensors (q/k/v and gate/up fused into one matrix each) and the
layer loop is a plain Python loop over them: the decode step is dominated by
weight streaming, so every avoided op and module call counts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F

from entmtp import reference
from entmtp.model import attention
from entmtp.model import linear as gemm
from entmtp.model.attention import OURS, SDPA, StepAttention
from entmtp.model.autotune import time_backends
from entmtp.model.config import ModelConfig, rope_inverse_frequencies
from entmtp.model.linear import bf16_linear
from entmtp.model.quant import QTYPES, Precision, QuantizedWeight, embedding, precision_of
from entmtp.reference import tree_bits_from_parents


@dataclasses.dataclass
class LayerWeights:
    # Matrices are float tensors or QuantizedWeight blocks (entmtp.model.quant).
    input_norm: torch.Tensor      # [H]
    qkv: torch.Tensor             # [(Hq + 2 Hkv) D, H]
    qkv_bias: Optional[torch.Tensor]  # [(Hq + 2 Hkv) D] (qwen2) or None
    o: torch.Tensor               # [H, Hq D]
    post_norm: torch.Tensor       # [H]
    gate_up: torch.Tensor         # [2 I, H]
    down: torch.Tensor            # [H, I]


class KVCache:
    """Preallocated K/V for all layers in one tensor, so a commit is one op.

    kv: [n_layers, 2 (K, V), B, Hkv, capacity, D]. Slots [0, L) hold the
    committed sequence; a forward of T tokens writes slots [L, L + T).
    """

    def __init__(self, config: ModelConfig, batch: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.capacity = capacity
        self.kv = torch.zeros(
            config.num_hidden_layers, 2, batch, config.num_key_value_heads, capacity,
            config.head_dim, dtype=dtype, device=device)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           backend: Optional[str] = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) -> [M, N].

    fp32 with few rows goes through (W @ x.T).T: MKL's fp32 GEMV and small-M GEMM
    run slow and single-threaded, while the transposed product takes its fast
    multi-threaded path (measured 1.65x faster decode on a 2-core AVX2 machine).
    M = 1 is padded to 2 rows for the same reason, as a contiguous copy: a
    stride-0 expand made the product 2.7x slower on a 2-core Zen4 (30 layers'
    projections: 73-81 ms expanded, 27-28 ms copied, 38-47 ms for F.linear).
    bf16 weights on the CPU take `backend` (a decoder layer's one choice for its row
    count) or else the backend measured fastest for the shape (entmtp.model.linear). Quantized weights take
    linear_quant (csrc/kernels/linear_quant.h).
    """
    if isinstance(weight, QuantizedWeight):
        return weight.linear(x, bias)
    if (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
        # Our kernel (csrc/kernels/linear_bf16w.h, per ISA) or torch's oneDNN, whichever
        # measured faster on this machine for this shape and row count (entmtp.model.linear).
        # Ours has no backward, so training keeps torch's path.
        return bf16_linear(x, weight, bias, backend)
    if x.dtype == torch.float32 and x.shape[0] <= 32:
        rows = x.shape[0]
        if rows == 1:
            x = x.expand(2, -1).contiguous()  # [2, K]
        out = torch.mm(weight, x.t()).t()[:rows].contiguous()  # [M, N]; a small copy
        return out + bias if bias is not None else out
    return F.linear(x, weight, bias)


def rope_tables(config: ModelConfig, n_positions: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [P, D] for positions 0..P-1: angles in float64, then the rotate-half layout
    (dimension i pairs with i + D/2, so the [P, D/2] table is repeated)."""
    inv_freq = torch.tensor(rope_inverse_frequencies(config), dtype=torch.float64)          # [D/2]
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1).float()                                      # [P, D]
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


class LayerOps:
    """The element-wise pieces of a layer, fused into one op each.

    On CPU they are the extension's kernels (a decode step is dominated by
    per-op overhead otherwise: ~45 small torch ops per layer); elsewhere the
    torch composites of entmtp.reference, which are also the kernels' spec.
    """

    def __init__(self, device: torch.device):
        if device.type == "cpu":
            e = torch.ops.entmtp
            self.rms_norm, self.add_rms_norm = e.rms_norm, e.add_rms_norm
            self.rotary_qkv, self.silu_mul = e.rotary_qkv, e.silu_mul
        else:
            self.rms_norm, self.add_rms_norm = reference.rms_norm_ref, reference.add_rms_norm_ref
            self.rotary_qkv, self.silu_mul = reference.rotary_qkv_ref, reference.silu_mul_ref


class LlamaModel:
    def __init__(self, config: ModelConfig, embed: torch.Tensor | QuantizedWeight, layers: list[LayerWeights],
                 final_norm: torch.Tensor, lm_head: torch.Tensor | QuantizedWeight,
                 precision: Optional[Precision] = None):
        self.config = config
        self.embed = embed            # [V, H] (float or quantized blocks)
        self.layers = layers
        self.final_norm = final_norm  # [H], in the activation dtype
        self.lm_head = lm_head        # [V, H]; the same object as embed when tied
        self.precision = precision or precision_of(embed.dtype)
        self.dtype = self.precision.activations  # activations and KV cache
        self.device = final_norm.device
        self._rope_cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.layer_ops = LayerOps(self.device)
        # Run the layer loop as one op (torch.ops.entmtp.decoder_layers) wherever it would
        # call the same ops as the Python loop; False keeps the Python loop (tests compare).
        self.fused_layers = True
        self._stack: Optional[tuple] = None  # _build_stack, at first use
        self._bf16_shapes: Optional[tuple] = None  # the bf16 layer matrices' shapes (_layer_gemm)
        self._attention_forced: Optional[str] = None  # _measure_layer's probes: no choice to make
        self._layer_key_text: Optional[str] = None  # _layer_key, at first use
        self._ensure_rope(min(config.max_position_embeddings, 4096))

    # -- RoPE -----------------------------------------------------------------
    def _ensure_rope(self, n_positions: int) -> None:
        if self._rope_cache is not None and self._rope_cache[0].shape[0] >= n_positions:
            return
        self._rope_cache = rope_tables(self.config, n_positions, self.device, self.dtype)

    # -- forward --------------------------------------------------------------
    def new_cache(self, batch: int = 1, capacity: Optional[int] = None) -> KVCache:
        capacity = capacity or self.config.max_position_embeddings
        self._ensure_rope(capacity)
        return KVCache(self.config, batch, capacity, self.dtype, self.device)

    def reuse_cache(self, cache: Optional[KVCache], needed: int) -> KVCache:
        """One cache serves many prompts; a new one only when `needed` exceeds it."""
        if cache is None or cache.capacity < needed:
            cache = self.new_cache(batch=1, capacity=needed)
        return cache

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        cache_len: int,
        tree_bits: Optional[torch.Tensor] = None,
        logits_rows: Optional[torch.Tensor | slice] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run T new tokens after `cache_len` committed ones.

        input_ids, position_ids: [B, T]. tree_bits: None (causal among the new
        tokens) or the ancestor bitmask [T, ceil(T/64)] of a draft tree.
        logits_rows selects which of the T positions get LM-head logits (an index
        tensor or slice); None means all, and an empty slice skips the LM head.
        Returns (hidden [B, T, H] after the final norm, logits [B, T', V] or None).
        """
        cfg = self.config
        batch, n_new = input_ids.shape
        x = embedding(input_ids, self.embed, self.dtype).reshape(batch, n_new, cfg.hidden_size)
        hidden = self.forward_embeds(x, position_ids, cache, cache_len, tree_bits)
        if logits_rows is None:
            rows = hidden
        else:
            rows = hidden[:, logits_rows]
            if rows.shape[1] == 0:
                return hidden, None
        logits = linear(rows.reshape(-1, cfg.hidden_size), self.lm_head)
        return hidden, logits.view(batch, rows.shape[1], -1)

    @torch.inference_mode()
    def forward_embeds(self, inputs: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, cache_len: int,
                       tree_bits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoder layers and final norm on input vectors instead of token ids:
        inputs [B, T, H] -> hidden [B, T, H]. `forward` runs it on the token
        embeddings; Hydra++'s prefix layer (entmtp.heads.prefix) on the base's hidden states."""
        cfg = self.config
        batch, n_new = position_ids.shape
        end = cache_len + n_new
        if end > cache.capacity:
            raise ValueError(f"sequence of {end} tokens exceeds the cache capacity {cache.capacity}")
        if cfg.sliding_window is not None and end > cfg.sliding_window:
            raise ValueError(f"sequence of {end} tokens exceeds the sliding window {cfg.sliding_window}")
        n_q, n_kv, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        rows, eps, fused = batch * n_new, cfg.rms_norm_eps, self.layer_ops
        scale = 1.0 / math.sqrt(head_dim)
        cos_table, sin_table = self._rope_cache
        flat_positions = position_ids.reshape(rows)
        cos, sin = cos_table[flat_positions], sin_table[flat_positions]  # [B T, D]

        x = inputs.to(self.dtype).reshape(rows, cfg.hidden_size)  # residual [B T, H]
        backend = self._layer_gemm(rows)  # one GEMM backend for every layer matrix, or None
        attend = self._step_attention(tree_bits, cache_len, n_new, backend)  # what every layer shares
        stack = self._fused_stack(rows, attend, backend)
        if stack is not None:
            h = torch.ops.entmtp.decoder_layers(x, stack[0], stack[1], cos, sin, cache.kv, cache_len, batch,
                                                tree_bits, n_q, n_kv, eps, scale, self.final_norm)
            return h.view(batch, n_new, -1)
        h = fused.rms_norm(x, self.layers[0].input_norm, eps)
        kv = cache.kv
        for index, layer in enumerate(self.layers):
            qkv = linear(h, layer.qkv, layer.qkv_bias, backend)         # [B T, (Hq + 2 Hkv) D]
            # RoPE on q and k; k and v land in cache slots [cache_len, end).
            q = fused.rotary_qkv(qkv, cos, sin, n_q, n_kv, kv[index, 0], kv[index, 1], cache_len)
            attn = attend(q.view(batch, n_new, n_q, head_dim), kv[index, 0, :, :, :end],
                          kv[index, 1, :, :, :end], scale)  # [B, T, Hq, D]
            h, x = fused.add_rms_norm(linear(attn.view(rows, n_q * head_dim), layer.o, None, backend), x,
                                      layer.post_norm, eps)
            mlp = linear(fused.silu_mul(linear(h, layer.gate_up, None, backend)), layer.down, None, backend)
            # The next layer's input norm (or the final norm) fused with this residual add.
            next_norm = self.layers[index + 1].input_norm if index + 1 < len(self.layers) else self.final_norm
            h, x = fused.add_rms_norm(mlp, x, next_norm, eps)
        return h.view(batch, n_new, -1)

    __call__ = forward

    def _layer_gemm(self, rows: int) -> Optional[str]:
        """The GEMM backend all bf16 layer matrices take for a forward of `rows` bf16 rows on
        the CPU (entmtp.model.linear.choose_group); None where there is no choice."""
        if self.dtype != torch.bfloat16 or self.device.type != "cpu":
            return None
        if self._bf16_shapes is None:
            self._bf16_shapes = tuple(sorted({tuple(m.shape) for layer in self.layers
                                              for m in (layer.qkv, layer.o, layer.gate_up, layer.down)
                                              if not isinstance(m, QuantizedWeight) and m.dtype == torch.bfloat16}))
        return gemm.choose_group(rows, self._bf16_shapes) if self._bf16_shapes else None

    def _stack_possible(self, backend: Optional[str]) -> bool:
        """Whether a forward whose layer matrices take GEMM `backend` could run the layer
        loop as one op (ops.decoder_layers) with our attention: CPU, no autograd, and every
        matrix through our GEMMs (quantized blocks, or bf16 weights where `backend` is ours)."""
        if not self.fused_layers or self.device.type != "cpu" or torch.is_grad_enabled():
            return False
        if self._stack is None:
            self._stack = self._build_stack()
        return self._stack[0] is not None and backend in (None, gemm.OURS)

    def _fused_stack(self, rows: int, attend: StepAttention,
                     backend: Optional[str]) -> Optional[tuple[list[torch.Tensor], list[int]]]:
        """(weights, qtypes) for ops.decoder_layers when this forward of `rows` rows would run
        exactly its ops from Python (_stack_possible, and our attention); else None."""
        if attend.backend != OURS or not self._stack_possible(backend):
            return None
        return self._stack

    def _step_attention(self, tree_bits: Optional[torch.Tensor], cache_len: int, n_new: int,
                        backend: Optional[str]) -> StepAttention:
        """The attention backend (and SDPA's mask) every layer of this forward shares: a
        measured choice on the CPU. Where our attention lets the layer loop run as one op,
        the choice is measured on a whole layer (attention.choose_layer), since the one-op
        loop also saves the Python loop's op calls. Measured on a 2-core Sapphire Rapids
        (amx, bf16, 256 keys): SDPA alone beat ours at 16 new tokens (63 vs 99 us a call),
        yet a 16-node Hydra verify took 19.95 ms one-op with ours, 21.25 ms with SDPA."""
        cfg = self.config
        if self.device.type != "cpu":
            name = OURS
        elif self._attention_forced is not None:
            name = self._attention_forced
        elif self._stack_possible(backend):
            name = attention.choose_layer(self._layer_key(), n_new, cache_len, self._measure_layer)
        else:
            name = attention.choose(n_new, cache_len, cfg.num_attention_heads, cfg.num_key_value_heads,
                                    cfg.head_dim, self.dtype)
        return StepAttention(name, tree_bits, cache_len, n_new, self.device, self.dtype)

    def _layer_key(self) -> str:
        """What a layer's cost depends on besides T and L: its shapes, dtype and weight types
        (made once: every CPU forward asks)."""
        if self._layer_key_text is not None:
            return self._layer_key_text
        cfg = self.config
        qtypes = ",".join(str(q) for q in self._stack[1][:4])
        bias = "+bias" if self.layers[0].qkv_bias is not None else ""
        self._layer_key_text = (f"{cfg.hidden_size}x{cfg.intermediate_size}:{cfg.num_attention_heads}/"
                                f"{cfg.num_key_value_heads}x{cfg.head_dim}:{str(self.dtype).removeprefix('torch.')}"
                                f":w{qtypes}{bias}")
        return self._layer_key_text

    def _measure_layer(self, n_new: int, cache_len: int) -> dict[str, float]:
        """Median seconds of one forward through this model's first layer (its own weights)
        with each attention backend, n_new tokens after cache_len random ones: a one-layer
        model sharing the layer, each forced to one backend, on a scratch cache."""
        one = dataclasses.replace(self.config, num_hidden_layers=1)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(1, n_new, one.hidden_size, generator=generator).to(self.dtype)
        positions = torch.arange(cache_len, cache_len + n_new)[None]
        bits = None  # one token or a prefill: causal; else a bushy tree, as attention.measure
        if cache_len > 0 and n_new > 1:
            bits = tree_bits_from_parents(torch.tensor([-1] + [max(0, i - 4) for i in range(1, n_new)]))
        calls = {}
        for name in (OURS, SDPA):
            probe = LlamaModel(one, self.embed, self.layers[:1], self.final_norm, self.lm_head, self.precision)
            probe._attention_forced = name
            cache = probe.new_cache(1, cache_len + n_new)
            cache.kv.copy_(torch.randn(cache.kv.shape, generator=generator))
            calls[name] = (lambda p=probe, c=cache: p.forward_embeds(inputs, positions, c, cache_len, bits))
        # 15 rounds, not time_backends' 7: the calls are short (0.3-1.5 ms), and with another
        # process timing beside it a 4-token choice went to SDPA on the AMX Xeon (a 3-node step
        # 16.5 -> 20.6 ms) where a quiet machine measures ours 0.33 vs 0.42 ms a layer.
        return time_backends(calls, repeats=15)

    def _build_stack(self) -> tuple:
        """The decoder_layers arguments, built once: (weights, qtypes), or (None, None) where
        fp32 matrices take torch's GEMMs."""
        weights: list[torch.Tensor] = []
        qtypes: list[int] = []
        empty = torch.empty(0, dtype=self.dtype)
        for layer in self.layers:
            mats = (layer.qkv, layer.o, layer.gate_up, layer.down)
            for m in mats:
                if not isinstance(m, QuantizedWeight):
                    if m.dtype != torch.bfloat16:
                        return None, None
            data = [m.data if isinstance(m, QuantizedWeight) else m for m in mats]
            weights += [layer.input_norm, data[0], layer.qkv_bias if layer.qkv_bias is not None else empty,
                        data[1], layer.post_norm, data[2], data[3]]
            qtypes += [QTYPES[m.qtype][0] if isinstance(m, QuantizedWeight) else -1 for m in mats]
        return weights, qtypes
