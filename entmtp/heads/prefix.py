"""Hydra++ heads (upstream ``hydra_head_arch = "prefix-mlp"``): grounded Hydra heads that
read the output of one extra Llama decoder layer, the *prefix layer*, instead of h_t.

The prefix layer runs over the base model's final hidden states (after the final norm,
as if they were input embeddings), causally, with its own KV cache, and ends in its own
RMSNorm. Its output at position t replaces h_t as the heads' input, so a head sees the
whole prefix, not only the last hidden state:

    p_0..p_t = norm(layer(h_0..h_t))        one decoder layer, RoPE at the base positions
    head i at t: Hydra head i on concat(p_t, E(x_{t+1}), ..., E(x_{t+i+1}))

During decoding (PrefixRunner) the layer sees only committed positions: the prompt's
hidden states at prefill, then after each step the hidden states of the accepted path
(root first), appended at the committed length. A rejected draft never enters its
cache, which is the upstream rule "reset to the pre-step length plus the accepted count".

Two implementations of the same layer: `train_forward` (differentiable torch over whole
sequences, for `entmtp heads train`) and `runtime` (the base model's own layer code,
entmtp.model.llama, with a KV cache and the fused CPU ops). tests/test_hydrapp.py holds
them equal, and both against transformers' LlamaDecoderLayer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from entmtp.errors import EntmtpError
from entmtp.heads.modules import HydraHeads
from entmtp.model.config import ModelConfig
from entmtp.model.llama import KVCache, LayerWeights, LlamaModel, rope_tables
from entmtp.reference import rms_norm_ref, rope_ref, silu_mul_ref


@dataclasses.dataclass(frozen=True)
class PrefixShape:
    """Sizes of the prefix layer. Attention sizes must be the base model's (upstream builds
    the layer from the base config); RoPE and the norm epsilon always come from the base."""

    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EntmtpError(f"prefix {field.name} must be a positive integer, not {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise EntmtpError(f"prefix num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")

    @classmethod
    def of(cls, config: ModelConfig) -> "PrefixShape":
        return cls(config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                   config.intermediate_size)

    @classmethod
    def from_json(cls, raw: Any, source: Optional[str] = None) -> "PrefixShape":
        """entmtp_heads.json's `prefix` entry; errors name `source` when given."""
        where = f"{source}: " if source else ""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(raw, dict):
            raise EntmtpError(f"{where}prefix must be a JSON object with {', '.join(names)}")
        unknown, missing = sorted(set(raw) - set(names)), [n for n in names if n not in raw]
        if unknown or missing:
            what = f"unknown keys {', '.join(unknown)}" if unknown else f"missing keys {', '.join(missing)}"
            raise EntmtpError(f"{where}prefix has {what}")
        try:
            return cls(**raw)
        except EntmtpError as exc:
            raise EntmtpError(f"{where}{exc}") from None

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def check_base(self, config: ModelConfig, source: str) -> None:
        """One line naming the first size in which the prefix layer and the base model differ."""
        for name in ("num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) != getattr(config, name):
                raise EntmtpError(f"{source}: the prefix layer has {name} {getattr(self, name)} but the base "
                                  f"model has {getattr(config, name)}; these Hydra++ heads are for another model")

    def tensor_shapes(self, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape (our names; q/k/v and gate/up fused as in LayerWeights)."""
        H, D, inter = hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * D, self.num_key_value_heads * D
        return {"input_norm": (H,), "qkv": (q + 2 * kv, H), "o": (H, q), "post_norm": (H,),
                "gate_up": (2 * inter, H), "down": (H, inter), "norm": (H,)}


class PrefixLayer(nn.Module):
    """One Llama decoder layer plus its final RMSNorm, over base hidden states.

    Parameters: input_norm, post_norm, norm [H]; qkv [(Hq + 2 Hkv) D, H]; o [H, Hq D];
    gate_up [2 I, H] (= [gate | up]); down [H, I]. No biases (a Llama layer).
    """

    def __init__(self, shape: PrefixShape, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.shape, self.hidden_size = shape, hidden_size
        for name, size in shape.tensor_shapes(hidden_size).items():
            self.register_parameter(name, nn.Parameter(torch.empty(size, dtype=dtype)))
        with torch.no_grad():
            for name in ("input_norm", "post_norm", "norm"):
                getattr(self, name).fill_(1.0)
            for name in ("qkv", "gate_up"):
                nn.init.kaiming_uniform_(getattr(self, name), a=math.sqrt(5))
            # Attention and MLP start as no-ops (as Medusa's blocks start as the identity):
            # an untrained layer hands the heads h_t rescaled to unit RMS.
            self.o.zero_()
            self.down.zero_()

    def train_forward(self, hidden: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """hidden [B, T, H] (base states at positions 0..T-1) -> [B, T, H], differentiable."""
        batch, steps, _ = hidden.shape
        s, eps = self.shape, config.rms_norm_eps
        n_q, n_kv, dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        cos, sin = rope_tables(config, steps, hidden.device, hidden.dtype)     # [T, D]
        cos, sin = cos[:, None], sin[:, None]                                  # [T, 1, D]
        h = rms_norm_ref(hidden, self.input_norm, eps)
        q, k, v = F.linear(h, self.qkv).split([n_q * dim, n_kv * dim, n_kv * dim], dim=-1)
        q = rope_ref(q.view(batch, steps, n_q, dim), cos, sin).transpose(1, 2)  # [B, Hq, T, D]
        k = rope_ref(k.view(batch, steps, n_kv, dim), cos, sin).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(batch, steps, n_kv, dim).transpose(1, 2)
        group = n_q // n_kv  # kv head j serves query heads j*group .. (j+1)*group - 1
        attn = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                              is_causal=True)                  # [B, Hq, T, D]
        x = hidden + F.linear(attn.transpose(1, 2).reshape(batch, steps, n_q * dim), self.o)
        x = x + F.linear(silu_mul_ref(F.linear(rms_norm_ref(x, self.post_norm, eps), self.gate_up)), self.down)
        return rms_norm_ref(x, self.norm, eps)

    def runtime(self, model: LlamaModel) -> LlamaModel:
        """This layer as a one-layer LlamaModel in the base model's activation dtype and device,
        run through LlamaModel.forward_embeds. Its weights are detached views of the parameters
        (copies only where dtype or device differ), so the layer must not train meanwhile."""
        config = dataclasses.replace(model.config, num_hidden_layers=1, attention_bias=False,
                                     intermediate_size=self.shape.intermediate_size)

        def weight(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=model.device, dtype=model.dtype).contiguous()

        layer = LayerWeights(input_norm=weight(self.input_norm), qkv=weight(self.qkv), qkv_bias=None,
                             o=weight(self.o), post_norm=weight(self.post_norm), gate_up=weight(self.gate_up),
                             down=weight(self.down))
        # embed and lm_head are the base's, never used: forward_embeds takes vectors and has no LM head.
        return LlamaModel(config, model.embed, [layer], weight(self.norm), model.lm_head, model.precision)


class HydraPrefixHeads(HydraHeads):
    """Hydra++: grounded Hydra heads whose input is the prefix layer's output (module docstring)."""

    kind = "hydrapp"

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool, dtype: torch.dtype = torch.float32, *,
                 prefix_shape: PrefixShape):
        super().__init__(n_heads, n_layers, hidden_size, vocab_size, shared_lm_head, dtype)
        self.prefix = PrefixLayer(prefix_shape, hidden_size, dtype)


class PrefixRunner:
    """The prefix layer while decoding: a one-layer model and its own KV cache, which holds
    exactly the committed positions (the base cache's length)."""

    def __init__(self, layer: PrefixLayer, model: LlamaModel):
        layer.shape.check_base(model.config, "Hydra++ heads")
        self.model = layer.runtime(model)
        self.cache: Optional[KVCache] = None

    def start(self, hidden: torch.Tensor, capacity: int) -> torch.Tensor:
        """The prompt's base hidden states [P, H] -> the heads' input at its last position [H]."""
        self.cache = self.model.reuse_cache(self.cache, capacity)
        return self.advance(hidden, 0)

    def advance(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Append n newly committed positions' base hidden states [n, H] at `start` (the
        committed length before them) -> the heads' input at the last of them [H]."""
        positions = torch.arange(start, start + hidden.shape[0], device=hidden.device).unsqueeze(0)
        return self.model.forward_embeds(hidden.unsqueeze(0), positions, self.cache, start)[0, -1]


def prefix_shape_of(heads: Any) -> Optional[PrefixShape]:
    """The prefix layer's shape of Hydra++ heads; None for other heads."""
    return heads.prefix.shape if isinstance(heads, HydraPrefixHeads) else None


def check_prefix_config(raw: Optional[Mapping[str, Any]], kind: str) -> Optional[PrefixShape]:
    """entmtp_heads.json's `prefix`: required for hydrapp heads, absent for the others."""
    if kind == HydraPrefixHeads.kind:
        if raw is None:
            raise EntmtpError("hydrapp heads need a 'prefix' entry (the prefix layer's sizes)")
        return PrefixShape.from_json(raw)
    if raw is not None:
        raise EntmtpError(f"'prefix' goes only with hydrapp heads, not {kind}")
    return None
