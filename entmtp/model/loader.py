"""Load a Hugging Face model folder into our LlamaModel, with its tokenizer.

A folder holds config.json, model.safetensors (or shards listed in
model.safetensors.index.json), tokenizer.json and tokenizer_config.json, and
optionally generation_config.json. Every tensor name and shape is checked
against the config before anything runs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from entmtp.errors import EntmtpError, UsageError
from entmtp.model.checkpoint import SKIPPED_SUFFIXES, check_tensors, read_tensors
from entmtp.model.config import ModelConfig
from entmtp.model.llama import LayerWeights, LlamaModel
from entmtp.model.quant import PRECISIONS, Precision, QuantizedWeight, precision_of


@dataclasses.dataclass
class LoadedModel:
    folder: Path
    config: ModelConfig
    model: LlamaModel
    tokenizer: "object"
    eos_token_ids: tuple[int, ...]
    precision: Precision  # what --dtype asked for: activation dtype and weight format


def parse_dtype(name: str) -> Precision:
    """--dtype NAME: bf16, fp32, fp16, or quantized weights q4_1, q8_0 (bf16 activations)
    and q4_1-fp32, q8_0-fp32 (fp32 activations), see entmtp.model.quant."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UsageError(f"--dtype must be one of {', '.join(PRECISIONS)}, not {name!r}") from None


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EntmtpError(f"--device {name} was asked for but no CUDA GPU is available")
        return torch.device(name)
    raise UsageError(f"--device must be cpu or cuda, not {name!r}")


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EntmtpError(f"{index}: not a valid shard index ({exc})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise EntmtpError(f"model folder {folder} is missing shard {missing[0]}")
        return [folder / s for s in shards]
    raise EntmtpError(f"model folder {folder} has no model.safetensors or model.safetensors.index.json")


def _read_tensors(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(read_tensors(path, select=lambda names: [n for n in names if not n.endswith(SKIPPED_SUFFIXES)],
                                    dtype=dtype))
    return tensors


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
        })
        if cfg.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


def _check_tensors(folder: Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    if cfg.tie_word_embeddings:
        # Tied checkpoints sometimes still store lm_head; it must equal nothing new.
        tensors.pop("lm_head.weight", None)
    check_tensors(f"model folder {folder}", tensors, _expected_shapes(cfg))


def build_model(cfg: ModelConfig, tensors: dict[str, torch.Tensor], device: torch.device,
                precision: Precision | None = None) -> LlamaModel:
    precision = precision or precision_of(tensors["model.norm.weight"].dtype)

    def take(name: str) -> torch.Tensor:
        t = tensors.pop(name)
        return t if isinstance(t, QuantizedWeight) else t.to(device).contiguous()

    def cat(parts: list) -> torch.Tensor:
        if isinstance(parts[0], QuantizedWeight):
            from entmtp.model.quant_load import fused
            return fused(parts, precision)
        return torch.cat(parts)

    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        qkv_bias = None
        if cfg.attention_bias:
            qkv_bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        layers.append(LayerWeights(
            input_norm=take(p + "input_layernorm.weight"),
            qkv=cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
            qkv_bias=qkv_bias,
            o=take(p + "self_attn.o_proj.weight"),
            post_norm=take(p + "post_attention_layernorm.weight"),
            gate_up=cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]),
            down=take(p + "mlp.down_proj.weight"),
        ))
    embed = take("model.embed_tokens.weight")
    lm_head = embed if cfg.tie_word_embeddings else take("lm_head.weight")
    return LlamaModel(cfg, embed, layers, take("model.norm.weight"), lm_head, precision)


def read_eos_ids(folder: Path, tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except json.JSONDecodeError as exc:
            raise EntmtpError(f"{path}: not valid JSON ({exc})") from None
        if value is not None:
            ids.extend(value if isinstance(value, list) else [value])
            break
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids))


def load_model(name_or_path: Optional[str], dtype: Precision | torch.dtype = torch.bfloat16,
               device: torch.device | str = "cpu") -> LoadedModel:
    """`dtype`: a Precision (parse_dtype) or a torch dtype (float weights in it)."""
    from entmtp.model.registry import resolve_model
    from entmtp.model.tokenizer import Tokenizer

    precision = precision_of(dtype)
    if precision.weights is not None and torch.device(device).type != "cpu":
        raise UsageError(f"--dtype {precision.name} runs on the CPU only (its kernels are CPU kernels); "
                         f"use --dtype bf16 on {device}")
    folder = Path(resolve_model(name_or_path))
    if not folder.is_dir():
        raise EntmtpError(f"model folder {folder} does not exist")
    cfg = ModelConfig.from_folder(folder)
    tokenizer = Tokenizer.from_folder(folder)
    files = _weight_files(folder)
    if precision.weights is None:
        tensors = _read_tensors(files, precision.activations)
    else:
        from entmtp.model.quant_load import quantized_tensors
        tensors = quantized_tensors(folder, files, precision, cfg)
    _check_tensors(folder, cfg, tensors)
    model = build_model(cfg, tensors, torch.device(device), precision)
    return LoadedModel(folder, cfg, model, tokenizer, read_eos_ids(folder, tokenizer), precision)


def model_fingerprint(loaded: LoadedModel) -> dict:
    cfg = loaded.config
    return {"name": loaded.folder.name, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers}
