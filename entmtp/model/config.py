"""Model configuration: a frozen dataclass read from a Hugging Face config.json.

Only what changes the math is read; keys known to be harmless bookkeeping are
listed and ignored; any other key is an error, so a config we do not understand
is never silently run with the wrong numerics.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

from entmtp.errors import EntmtpError
from entmtp.jsonfile import read_json

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

# Keys that carry no numerics for inference (ids, bookkeeping, training-only knobs
# whose inference value is fixed). Those with a required value are checked below.
_IGNORED_KEYS = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "_name_or_path", "bos_token_id", "eos_token_id",
    "pad_token_id", "model_type", "attention_dropout", "hidden_dropout",
    "max_window_layers", "auto_map", "_attn_implementation_autoset",
    "unk_token_id", "output_attentions", "output_hidden_states", "return_dict",
    "is_encoder_decoder", "layer_types", "use_return_dict", "id2label", "label2id",
    "tokenizer_class", "chunk_size_feed_forward", "pruned_heads", "problem_type",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling ("rope_type": "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases (qwen2 always has them)
    rope_scaling: Optional[RopeScaling] = None
    sliding_window: Optional[int] = None  # None: full attention

    @property
    def q_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        cfg = dict(raw)

        def fail(msg: str) -> EntmtpError:
            return EntmtpError(f"{source}: {msg}")

        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise fail(
                f"unsupported architecture model_type={model_type!r}; "
                f"entmtp runs {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise fail(f"missing keys {', '.join(missing)}")
        for key, must in (("hidden_act", "silu"), ("mlp_bias", False), ("pretraining_tp", 1)):
            if key in cfg and cfg[key] != must:
                raise fail(f"{key}={cfg[key]!r} is not supported (only {must!r})")
        n_heads = int(cfg["num_attention_heads"])
        n_kv = int(cfg.get("num_key_value_heads") or n_heads)
        hidden = int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or hidden // n_heads)
        if n_heads % n_kv:
            raise fail(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")

        rope_theta, rope_scaling = _read_rope(cfg, fail)
        if model_type == "qwen2":
            attention_bias = True
            if cfg.get("use_sliding_window"):
                raise fail("use_sliding_window=true is not supported")
            sliding_window = None
        else:
            attention_bias = bool(cfg.get("attention_bias", False))
            sliding_window = cfg.get("sliding_window") if model_type == "mistral" else None
        unknown = set(cfg) - set(required) - _IGNORED_KEYS - {
            "hidden_act", "mlp_bias", "pretraining_tp", "num_key_value_heads", "head_dim",
            "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
            "max_position_embeddings", "tie_word_embeddings", "attention_bias",
            "sliding_window", "use_sliding_window",
        }
        if unknown:
            raise fail(f"unknown config keys {', '.join(sorted(unknown))}")
        return cls(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            rope_scaling=rope_scaling,
            sliding_window=int(sliding_window) if sliding_window else None,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise EntmtpError(f"model folder {folder} has no config.json")
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise EntmtpError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(raw, source=str(path))


def _read_rope(cfg: dict, fail) -> tuple[float, Optional[RopeScaling]]:
    # transformers 5 writes rope_parameters {"rope_type", "rope_theta", ...};
    # older configs use rope_theta plus an optional rope_scaling dict.
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(cfg.get("rope_theta", params.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3":
        try:
            scaling = RopeScaling(
                factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            )
        except KeyError as exc:
            raise fail(f"llama3 rope scaling lacks {exc.args[0]!r}") from None
        return theta, scaling
    raise fail(f"rope type {rope_type!r} is not supported (default and llama3 are)")


def rope_inverse_frequencies(config: ModelConfig) -> list[float]:
    """Per-pair inverse frequencies [head_dim/2], with llama3 scaling applied."""
    dim = config.head_dim
    inv = [config.rope_theta ** (-(2 * i) / dim) for i in range(dim // 2)]
    s = config.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return out
