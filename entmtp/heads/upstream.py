"""Reading the upstream head checkpoints into our modules: Medusa (v0.1 with per-head lm_heads,
"version 2" without, and Medusa-2 full checkpoints, whose head keys carry the
`medusa_head.` prefix) and Hydra (`hydra_lm_head.pt` + `config.json`: grounded `mlp` heads, and
`prefix-mlp` ones, Hydra++, whose prefix layer becomes entmtp.heads.prefix.PrefixLayer).

The layout is always inferred from tensor names, never from config.json: upstream
configs are known to disagree with their weights."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from entmtp.errors import EntmtpError
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.heads.prefix import HydraPrefixHeads, PrefixShape
from entmtp.jsonfile import read_json
from entmtp.model.checkpoint import check_tensors, read_tensors
from entmtp.model.config import ModelConfig


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


_PREFIX = "prefix_embeding_layer."  # upstream's spelling


HYDRA_ARCHS = ("mlp", "prefix-mlp")
# Keys a saved upstream head module may hold that are no weights of its own: the base model's
# embed_tokens it keeps a handle on (input_embed_fn), the prefix LlamaModel's unused embed_tokens,
# and RoPE frequency buffers (which entmtp computes from the base config).
_NOT_HEAD_WEIGHTS = ("input_embed_fn.", _PREFIX + "embed_tokens.")
_BUFFERS = ("rotary_emb.inv_freq",)


def _read_hydra_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise EntmtpError(f"{path}: expected a JSON object")
    return raw


def _hydra_arch(source: Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """"mlp" or "prefix-mlp" (Hydra++); the variants entmtp does not run are refused:

    * hidden_state_offset k > 0: the heads read hidden_states[-(k+1)], an earlier
      layer's output, which the base model does not hand to the heads.
    * grounded_heads = false: not path-conditioned (Medusa-like with biased lm_heads).
    * cross-attn / eagle-attn: different modules altogether.
    The config's arch and the keys must agree: prefix-mlp heads without their prefix
    layer (or the layer under an mlp config) would run a different function.
    """
    has_prefix = any(k.startswith(_PREFIX) for k in tensors)
    arch = config.get("hydra_head_arch", "prefix-mlp" if has_prefix else "mlp")
    if arch not in HYDRA_ARCHS:
        raise EntmtpError(f"Hydra heads at {source} use hydra_head_arch {arch!r}; "
                          f"entmtp runs {' and '.join(repr(a) for a in HYDRA_ARCHS)} (grounded)")
    if arch == "prefix-mlp" and not has_prefix:
        raise EntmtpError(f"Hydra heads at {source} say hydra_head_arch 'prefix-mlp' but hold no "
                          f"{_PREFIX}* keys (the prefix layer is missing)")
    if arch == "mlp" and has_prefix:
        raise EntmtpError(f"Hydra heads at {source} hold {_PREFIX}* keys (a prefix-mlp layer) but "
                          "config.json says hydra_head_arch 'mlp'")
    offset = config.get("hidden_state_offset", 0)
    if offset != 0:
        raise EntmtpError(
            f"Hydra heads at {source} read hidden_state_offset={offset!r} (an earlier layer's "
            "hidden state); entmtp supports only 0, the final normed hidden state")
    grounded = config.get("grounded_heads", True)
    if grounded is not True or (tensors and not any(m and m.group(3) == "res_connection"
                                                    for m in map(_HYDRA_MLP.match, tensors))):
        raise EntmtpError(f"Hydra heads at {source} are not grounded (grounded_heads=false); "
                          "entmtp supports only grounded Hydra heads")
    return arch


def _hydra_from_tensors(source: Path, tensors: dict[str, torch.Tensor], config: Mapping[str, Any],
                        hidden_size: int, vocab_size: int, dtype: Optional[torch.dtype],
                        model_config: Optional[ModelConfig] = None) -> HydraHeads:
    """Hydra state_dict, `mlp` or `prefix-mlp` (Hydra++). Head i is a sequence of ResBlocks:
    hydra_mlp.{i}.{j0}.{linear,res_connection}.{weight [H, H(i+2)], bias [H]} (conditioned),
    hydra_mlp.{i}.{j}.linear.{weight [H, H], bias} for the later j (one shared block upstream);
    j = 0, 1, .. for mlp; 1, 3, 5, .. for prefix-mlp, whose even indices are Dropouts.
    hydra_lm_head.{i}.weight [V, H] + .bias [V] (mlp) or hydra_lm_head.{i}.1.* (after a Dropout).
    prefix-mlp adds prefix_embeding_layer.{layers.0.*, norm.weight} (and an unused embed_tokens).
    Heads = distinct i under hydra_lm_head; layers = distinct j under hydra_mlp.0.
    """
    arch = _hydra_arch(source, tensors, config)
    # Not weights of the heads: the base embed_tokens the module keeps a handle on, RoPE buffers.
    tensors = {k: v for k, v in tensors.items() if not k.startswith(_NOT_HEAD_WEIGHTS) and not k.endswith(_BUFFERS)}
    n_heads = len({m.group(1) for m in map(_HYDRA_LM.match, tensors) if m})
    blocks = sorted({int(m.group(2)) for m in map(_HYDRA_MLP.match, tensors) if m and m.group(1) == "0"})
    if n_heads == 0 or not blocks:
        raise EntmtpError(f"heads file {source} holds no Hydra head keys "
                          "(hydra_mlp.{i}.{j}.*, hydra_lm_head.{i}.*)")
    n_layers, first = len(blocks), blocks[0]
    # A head is nn.Sequential(ResBlock, ...) (ResBlocks at 0, 1, ..; the LM head a bare Linear), or
    # with a Dropout before each module (ResBlocks at 1, 3, ..; the LM head's Linear at .1), as
    # prefix-mlp heads are saved.
    if blocks not in (list(range(n_layers)), list(range(1, 2 * n_layers, 2))):
        raise EntmtpError(f"heads file {source}: hydra_mlp.0 holds blocks {blocks}; expected 0, 1, .. "
                          "or 1, 3, .. (each after a Dropout)")
    lm = "hydra_lm_head.{}.1." if first == 1 else "hydra_lm_head.{}."
    cond = f"hydra_mlp.0.{first}.linear.weight"
    hidden = tensors[cond].shape[0] if cond in tensors else None
    vocab = tensors[lm.format(0) + "weight"].shape[0] if lm.format(0) + "weight" in tensors else None
    _check_sizes(source, hidden, vocab, hidden_size, vocab_size)
    H, V = hidden_size, vocab_size
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for part in ("linear", "res_connection"):
            expected[f"hydra_mlp.{i}.{first}.{part}.weight"] = (H, H * (i + 2))
            expected[f"hydra_mlp.{i}.{first}.{part}.bias"] = (H,)
        for j in blocks[1:]:
            expected[f"hydra_mlp.{i}.{j}.linear.weight"] = (H, H)
            expected[f"hydra_mlp.{i}.{j}.linear.bias"] = (H,)
        expected[lm.format(i) + "weight"] = (V, H)
        expected[lm.format(i) + "bias"] = (V,)
    prefix = None
    if arch == "prefix-mlp":
        prefix, prefix_expected = _prefix_layout(source, tensors, H, model_config)
        expected |= prefix_expected
    check_tensors(f"heads file {source}", tensors, expected)

    sizes = (n_heads, n_layers, H, V, False)
    heads = (HydraHeads(*sizes, dtype=_pick_dtype(tensors, dtype)) if prefix is None
             else HydraPrefixHeads(*sizes, dtype=_pick_dtype(tensors, dtype), prefix_shape=prefix))
    with torch.no_grad():
        for i in range(n_heads):
            heads.cond_weight[i].copy_(tensors[f"hydra_mlp.{i}.{first}.linear.weight"])
            heads.cond_bias[i].copy_(tensors[f"hydra_mlp.{i}.{first}.linear.bias"])
            heads.res_weight[i].copy_(tensors[f"hydra_mlp.{i}.{first}.res_connection.weight"])
            heads.res_bias[i].copy_(tensors[f"hydra_mlp.{i}.{first}.res_connection.bias"])
            for slot, j in enumerate(blocks[1:]):
                heads.block_weight[i, slot].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.weight"])
                heads.block_bias[i, slot].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.bias"])
            heads.lm_head[i].copy_(tensors[lm.format(i) + "weight"])
            heads.lm_head_bias[i].copy_(tensors[lm.format(i) + "bias"])
        if prefix is not None:
            _copy_prefix(heads.prefix, tensors)
    return heads


# Upstream's prefix layer (a one-layer transformers LlamaModel) -> our PrefixLayer parameters.
_PREFIX_LAYER = _PREFIX + "layers.0."
_PREFIX_KEYS = {"input_norm": ("input_layernorm",), "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "o": ("self_attn.o_proj",), "post_norm": ("post_attention_layernorm",),
                "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


def _prefix_layout(source: Path, tensors: Mapping[str, torch.Tensor], hidden_size: int,
                   model_config: Optional[ModelConfig]) -> tuple[PrefixShape, dict[str, tuple[int, ...]]]:
    """The prefix layer's shape (attention sizes from the base config, as upstream builds it;
    the MLP width from down_proj) and its expected key shapes."""
    if model_config is None:
        raise EntmtpError(f"Hydra++ heads at {source}: loading a prefix-mlp checkpoint needs the base "
                          "model's config (its attention sizes)")
    extra = sorted(k for k in tensors if k.startswith(_PREFIX + "layers.") and not k.startswith(_PREFIX_LAYER))
    if extra:
        raise EntmtpError(f"heads file {source}: the prefix layer has more than one decoder layer ({extra[0]}); "
                          "entmtp runs Hydra++'s one-layer prefix")
    down = tensors.get(_PREFIX_LAYER + "mlp.down_proj.weight")
    intermediate = down.shape[-1] if down is not None and down.dim() == 2 else model_config.intermediate_size
    shape = dataclasses.replace(PrefixShape.of(model_config), intermediate_size=intermediate)
    ours = shape.tensor_shapes(hidden_size)
    D, q, kv = shape.head_dim, shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    expected = {_PREFIX_LAYER + "input_layernorm.weight": ours["input_norm"],
                _PREFIX_LAYER + "self_attn.q_proj.weight": (q, hidden_size),
                _PREFIX_LAYER + "self_attn.k_proj.weight": (kv, hidden_size),
                _PREFIX_LAYER + "self_attn.v_proj.weight": (kv, hidden_size),
                _PREFIX_LAYER + "self_attn.o_proj.weight": ours["o"],
                _PREFIX_LAYER + "post_attention_layernorm.weight": ours["post_norm"],
                _PREFIX_LAYER + "mlp.gate_proj.weight": (intermediate, hidden_size),
                _PREFIX_LAYER + "mlp.up_proj.weight": (intermediate, hidden_size),
                _PREFIX_LAYER + "mlp.down_proj.weight": ours["down"],
                _PREFIX + "norm.weight": ours["norm"]}
    for key, want in expected.items():
        if key in tensors and tuple(tensors[key].shape) != want:
            raise EntmtpError(
                f"heads file {source}: {key} has shape {list(tensors[key].shape)}, but the base model "
                f"(hidden size {hidden_size}, {shape.num_attention_heads} heads, {shape.num_key_value_heads} "
                f"kv heads of dim {D}) needs {list(want)}: this prefix layer is for another model")
    return shape, expected


def _copy_prefix(layer, tensors: Mapping[str, torch.Tensor]) -> None:
    for ours, theirs in _PREFIX_KEYS.items():
        getattr(layer, ours).copy_(torch.cat([tensors[f"{_PREFIX_LAYER}{name}.weight"] for name in theirs]))
    layer.norm.copy_(tensors[_PREFIX + "norm.weight"])


def _is_hydra(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("hydra_mlp.", "hydra_lm_head.", _PREFIX)) for k in tensors)


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
