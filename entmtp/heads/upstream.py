"""Reading the upstream head checkpoints into our modules: Medusa (v0.1 with per-head lm_heads,
"version 2" without, and Medusa-2 full checkpoints, whose head keys carry the
`medusa_head.` prefix) and Hydra (`hydra_lm_head.pt` + `config.json`, grounded MLP heads).

The layout is always inferred from tensor names, never from config.json: upstream
configs are known to disagree with their weights."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from entmtp.errors import EntmtpError
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.jsonfile import read_json
from entmtp.model.checkpoint import check_tensors, read_tensors


def _medusa2_names(names: list[str]) -> list[str]:
    """In a Medusa-2 full checkpoint only the `medusa_head.` keys are heads; else keep all."""
    heads = [k for k in names if k.startswith(_MEDUSA_PREFIX)]
    return heads if heads else names


_MEDUSA_PREFIX = "medusa_head."


_MEDUSA_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def _medusa_from_tensors(source: Path, tensors: dict[str, torch.Tensor], hidden_size: int,
                         vocab_size: int, dtype: Optional[torch.dtype]) -> MedusaHeads:
    """Medusa head state_dict (keys `{i}.{l}.linear.*`, `{i}.{L}.weight`, prefix stripped).

    Heads = 1 + largest head index; layers = distinct l with `0.{l}.linear.weight`;
    per-head lm_heads iff `{i}.{L}.weight` exists.
    """
    parsed = [m for m in map(_MEDUSA_KEY.match, tensors) if m]
    if not parsed:
        raise EntmtpError(f"heads file {source} holds no Medusa head keys "
                          f"(`{{head}}.{{layer}}.linear.weight`)")
    n_heads = 1 + max(int(m.group(1)) for m in parsed)
    n_layers = len({m.group(2) for m in parsed if m.group(1) == "0" and m.group(3) == "linear.weight"})
    if n_layers == 0:
        raise EntmtpError(f"heads file {source} is missing keys: 0.0.linear.weight")
    own_lm = f"0.{n_layers}.weight" in tensors
    hidden = tensors["0.0.linear.weight"].shape[0] if "0.0.linear.weight" in tensors else None
    vocab = tensors[f"0.{n_layers}.weight"].shape[0] if own_lm else None
    _check_sizes(source, hidden, vocab, hidden_size, vocab_size)
    H = hidden_size
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for layer in range(n_layers):
            expected[f"{i}.{layer}.linear.weight"] = (H, H)
            expected[f"{i}.{layer}.linear.bias"] = (H,)
        if own_lm:
            expected[f"{i}.{n_layers}.weight"] = (vocab_size, H)
    check_tensors(f"heads file {source}", tensors, expected)

    heads = MedusaHeads(n_heads, n_layers, H, vocab_size, shared_lm_head=not own_lm,
                        dtype=_pick_dtype(tensors, dtype))
    with torch.no_grad():
        for i in range(n_heads):
            for layer in range(n_layers):
                heads.block_weight[i, layer].copy_(tensors[f"{i}.{layer}.linear.weight"])
                heads.block_bias[i, layer].copy_(tensors[f"{i}.{layer}.linear.bias"])
            if own_lm:
                heads.lm_head[i].copy_(tensors[f"{i}.{n_layers}.weight"])
    return heads


def _medusa2_files(folder: Path) -> list[Path]:
    """Weight files of a full (base + heads) checkpoint that hold `medusa_head.` keys."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted({f for k, f in weight_map.items() if k.startswith(_MEDUSA_PREFIX)})
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise EntmtpError(f"{index}: not a valid shard index ({exc})") from None
            if not shards:
                raise EntmtpError(f"{index} lists no {_MEDUSA_PREFIX}* keys: not a Medusa-2 checkpoint")
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return []


def _medusa2_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Only the `medusa_head.` keys of a full checkpoint, prefix stripped."""
    heads: dict[str, torch.Tensor] = {}
    for path in files:
        for k, v in read_tensors(path, "heads file", _medusa2_names).items():
            if k.startswith(_MEDUSA_PREFIX):
                heads[k[len(_MEDUSA_PREFIX):]] = v
    return heads


_HYDRA_MLP = re.compile(r"^hydra_mlp\.(\d+)\.(\d+)\.(linear|res_connection)\.(weight|bias)$")


_HYDRA_LM = re.compile(r"^hydra_lm_head\.(\d+)\.")


def _read_hydra_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise EntmtpError(f"{path}: expected a JSON object")
    return raw


def _reject_unsupported_hydra(source: Path, tensors: Mapping[str, torch.Tensor],
                              config: Mapping[str, Any]) -> None:
    """Only grounded `mlp` heads reading the last hidden state are supported.

    * prefix-mlp (Hydra++): the heads read the output of an extra Llama decoder layer
      run over the base hidden states with its own KV cache, not h_t; running the heads
      without that layer would be wrong, and entmtp does not run the layer.
    * hidden_state_offset k > 0: the heads read hidden_states[-(k+1)], an earlier
      layer's output, which the base model does not hand to the heads.
    * grounded_heads = false: not path-conditioned (Medusa-like with biased lm_heads).
    * cross-attn / eagle-attn: different modules altogether.
    """
    arch = config.get("hydra_head_arch", "mlp")
    if arch == "prefix-mlp" or any(k.startswith("prefix_embeding_layer.") for k in tensors):
        raise EntmtpError(
            f"Hydra heads at {source} use hydra_head_arch 'prefix-mlp' (Hydra++): they need an "
            "extra decoder layer with its own KV cache over the base hidden states, which "
            "entmtp does not support; use grounded 'mlp' Hydra heads or Medusa heads")
    if arch != "mlp":
        raise EntmtpError(f"Hydra heads at {source} use hydra_head_arch {arch!r}; "
                          "entmtp supports only grounded 'mlp' Hydra heads")
    offset = config.get("hidden_state_offset", 0)
    if offset != 0:
        raise EntmtpError(
            f"Hydra heads at {source} read hidden_state_offset={offset!r} (an earlier layer's "
            "hidden state); entmtp supports only 0, the final normed hidden state")
    grounded = config.get("grounded_heads", True)
    if grounded is not True or (tensors and "hydra_mlp.0.0.res_connection.weight" not in tensors):
        raise EntmtpError(f"Hydra heads at {source} are not grounded (grounded_heads=false); "
                          "entmtp supports only grounded Hydra heads")


def _hydra_from_tensors(source: Path, tensors: dict[str, torch.Tensor], config: Mapping[str, Any],
                        hidden_size: int, vocab_size: int,
                        dtype: Optional[torch.dtype]) -> HydraHeads:
    """Hydra `mlp` state_dict:
    hydra_mlp.{i}.0.{linear,res_connection}.{weight [H, H(i+2)], bias [H]},
    hydra_mlp.{i}.{j}.linear.{weight [H, H], bias} for 1 <= j < L (one shared block upstream),
    hydra_lm_head.{i}.{weight [V, H], bias [V]}.
    Heads = distinct i under hydra_lm_head; layers = distinct j under hydra_mlp.0.
    """
    _reject_unsupported_hydra(source, tensors, config)
    n_heads = len({m.group(1) for m in map(_HYDRA_LM.match, tensors) if m})
    n_layers = len({m.group(2) for m in map(_HYDRA_MLP.match, tensors) if m and m.group(1) == "0"})
    if n_heads == 0 or n_layers == 0:
        raise EntmtpError(f"heads file {source} holds no Hydra head keys "
                          "(hydra_mlp.{i}.{j}.*, hydra_lm_head.{i}.*)")
    hidden = tensors["hydra_mlp.0.0.linear.weight"].shape[0] \
        if "hydra_mlp.0.0.linear.weight" in tensors else None
    vocab = tensors["hydra_lm_head.0.weight"].shape[0] if "hydra_lm_head.0.weight" in tensors else None
    _check_sizes(source, hidden, vocab, hidden_size, vocab_size)
    H, V = hidden_size, vocab_size
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for part in ("linear", "res_connection"):
            expected[f"hydra_mlp.{i}.0.{part}.weight"] = (H, H * (i + 2))
            expected[f"hydra_mlp.{i}.0.{part}.bias"] = (H,)
        for j in range(1, n_layers):
            expected[f"hydra_mlp.{i}.{j}.linear.weight"] = (H, H)
            expected[f"hydra_mlp.{i}.{j}.linear.bias"] = (H,)
        expected[f"hydra_lm_head.{i}.weight"] = (V, H)
        expected[f"hydra_lm_head.{i}.bias"] = (V,)
    check_tensors(f"heads file {source}", tensors, expected)

    heads = HydraHeads(n_heads, n_layers, H, V, shared_lm_head=False,
                       dtype=_pick_dtype(tensors, dtype))
    with torch.no_grad():
        for i in range(n_heads):
            heads.cond_weight[i].copy_(tensors[f"hydra_mlp.{i}.0.linear.weight"])
            heads.cond_bias[i].copy_(tensors[f"hydra_mlp.{i}.0.linear.bias"])
            heads.res_weight[i].copy_(tensors[f"hydra_mlp.{i}.0.res_connection.weight"])
            heads.res_bias[i].copy_(tensors[f"hydra_mlp.{i}.0.res_connection.bias"])
            for j in range(1, n_layers):
                heads.block_weight[i, j - 1].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.weight"])
                heads.block_bias[i, j - 1].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.bias"])
            heads.lm_head[i].copy_(tensors[f"hydra_lm_head.{i}.weight"])
            heads.lm_head_bias[i].copy_(tensors[f"hydra_lm_head.{i}.bias"])
    return heads


def _is_hydra(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("hydra_mlp.", "hydra_lm_head.", "prefix_embeding_layer.")) for k in tensors)


def _check_sizes(source: Path, hidden: Optional[int], vocab: Optional[int], hidden_size: int,
                 vocab_size: int) -> None:
    """None: that tensor is absent; check_tensors then reports it as a missing key."""
    if hidden is not None and hidden != hidden_size:
        raise EntmtpError(f"heads expect hidden size {hidden} but the model has {hidden_size} ({source})")
    if vocab is not None and vocab != vocab_size:
        raise EntmtpError(f"heads expect vocab size {vocab} but the model has {vocab_size} ({source})")


def _pick_dtype(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is not None:
        return dtype
    return next(iter(tensors.values())).dtype
