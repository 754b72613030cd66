"""Heads on disk: our format (a folder with `entmtp_heads.json` + `heads.safetensors`,
format `entmtp-heads/1`), saving it, and `load_heads`, which reads ours or an
upstream Medusa/Hydra checkpoint (entmtp.heads.upstream) and checks it against the model."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from entmtp.errors import EntmtpError
from entmtp.heads.modules import _CLASSES, KINDS, Heads
from entmtp.heads.prefix import HydraPrefixHeads, check_prefix_config, prefix_shape_of
from entmtp.heads.upstream import (
    _MEDUSA_PREFIX,
    _check_sizes,
    _hydra_from_tensors,
    _is_hydra,
    _medusa2_files,
    _medusa2_names,
    _medusa2_tensors,
    _medusa_from_tensors,
    _pick_dtype,
    _read_hydra_config,
)
from entmtp.jsonfile import read_json
from entmtp.model.checkpoint import check_tensors, first_few, read_tensors
from entmtp.model.config import ModelConfig

FORMAT_ID = "entmtp-heads/1"


CONFIG_NAME = "entmtp_heads.json"


WEIGHTS_NAME = "heads.safetensors"


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Contents of ``entmtp_heads.json`` (format ``entmtp-heads/1``).

    n_layers counts residual blocks per head; for Hydra that includes the first,
    conditioned block (the same count as upstream ``hydra_num_layers``).
    base_model / training are free-form provenance, stored and returned as given.
    prefix: the prefix layer's sizes (entmtp.heads.prefix.PrefixShape) of hydrapp heads only.
    """

    kind: str
    n_heads: int
    n_layers: int
    hidden_size: int
    vocab_size: int
    shared_lm_head: bool
    base_model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prefix: Optional[Mapping[str, int]] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EntmtpError(f"heads kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        check_prefix_config(self.prefix, self.kind)
        for name in ("n_heads", "n_layers", "hidden_size", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EntmtpError(f"heads {name} must be a positive integer, not {value!r}")
        if not isinstance(self.shared_lm_head, bool):
            raise EntmtpError(f"heads shared_lm_head must be true or false, not {self.shared_lm_head!r}")
        for name in ("base_model", "training"):
            if not isinstance(getattr(self, name), Mapping):
                raise EntmtpError(f"heads {name} must be a JSON object")

    @classmethod
    def from_json(cls, raw: Any, source: str) -> "HeadsConfig":
        if not isinstance(raw, dict):
            raise EntmtpError(f"{source}: expected a JSON object")
        fields = [f.name for f in dataclasses.fields(cls)]
        allowed = set(fields) | {"format"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise EntmtpError(f"{source}: unknown keys: {first_few(unknown)}")
        if raw.get("format") != FORMAT_ID:
            raise EntmtpError(f"{source}: format must be {FORMAT_ID!r}, not {raw.get('format')!r}")
        missing = [k for k in fields if k not in raw and k != "prefix"]
        if missing:
            raise EntmtpError(f"{source}: missing keys: {', '.join(missing)}")
        try:
            return cls(**{k: raw[k] for k in fields if k in raw})
        except EntmtpError as exc:
            raise EntmtpError(f"{source}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_ID, "kind": self.kind, "n_heads": self.n_heads,
            "n_layers": self.n_layers, "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size, "shared_lm_head": self.shared_lm_head,
            "base_model": dict(self.base_model), "training": dict(self.training),
        } | ({} if self.prefix is None else {"prefix": dict(self.prefix)})


def heads_config(heads: Heads, metadata: Optional[Mapping[str, Any]] = None) -> HeadsConfig:
    """The HeadsConfig describing `heads`; provenance from `metadata` or heads.metadata."""
    meta = dict(heads.metadata if metadata is None else metadata)
    unknown = sorted(set(meta) - {"base_model", "training"})
    if unknown:
        raise EntmtpError(f"heads metadata has unknown keys: {first_few(unknown)} "
                          "(allowed: base_model, training)")
    prefix = prefix_shape_of(heads)
    return HeadsConfig(kind=heads.kind, n_heads=heads.n_heads, n_layers=heads.n_layers,
                       hidden_size=heads.hidden_size, vocab_size=heads.vocab_size,
                       shared_lm_head=heads.shared_lm_head,
                       base_model=dict(meta.get("base_model", {})),
                       training=dict(meta.get("training", {})),
                       prefix=None if prefix is None else prefix.to_json())


def save_heads(heads: Heads, directory: Union[str, Path],
               metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `heads` as ``entmtp_heads.json`` + ``heads.safetensors`` under `directory`.

    metadata: {"base_model": {...}, "training": {...}} provenance (other keys raise);
    None stores heads.metadata. Returns the directory.
    """
    from safetensors.torch import save_file

    config = heads_config(heads, metadata)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Contiguous, unshared copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in heads.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT_ID})
    (out / CONFIG_NAME).write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    return out


def _load_ours(folder: Path, hidden_size: int, vocab_size: int, dtype: Optional[torch.dtype],
               model_config: Optional[ModelConfig]) -> Heads:
    config_path = folder / CONFIG_NAME
    raw = read_json(config_path)
    config = HeadsConfig.from_json(raw, str(config_path))
    _check_sizes(config_path, config.hidden_size, config.vocab_size, hidden_size, vocab_size)
    prefix = check_prefix_config(config.prefix, config.kind)
    if prefix is not None and model_config is not None:
        prefix.check_base(model_config, str(config_path))
    weights = folder / WEIGHTS_NAME
    tensors = read_tensors(weights, "heads file")
    if not tensors:
        raise EntmtpError(f"heads file {weights} holds no tensors")
    sizes = (config.n_heads, config.n_layers, config.hidden_size, config.vocab_size, config.shared_lm_head)
    if prefix is not None:
        heads = HydraPrefixHeads(*sizes, dtype=_pick_dtype(tensors, dtype), prefix_shape=prefix)
    else:
        heads = _CLASSES[config.kind](*sizes, dtype=_pick_dtype(tensors, dtype))
    expected = {k: tuple(v.shape) for k, v in heads.state_dict().items()}
    check_tensors(f"heads file {weights}", tensors, expected)
    heads.load_state_dict(tensors)
    heads.metadata = {"base_model": dict(config.base_model), "training": dict(config.training)}
    return heads


_FILE_CANDIDATES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt",
                    "hydra_lm_head.safetensors", "hydra_lm_head.pt")


def load_heads(path: Union[str, Path], *, hidden_size: int, vocab_size: int,
               kind: Optional[str] = None, dtype: Optional[torch.dtype] = None,
               model_config: Optional[ModelConfig] = None) -> Heads:
    """Load draft heads and check them against the base model's hidden and vocab sizes.

    path: our directory (entmtp_heads.json), a Medusa/Hydra directory
      (medusa_lm_head.{safetensors,pt}, hydra_lm_head.pt, or a Medusa-2 full checkpoint
      with model.safetensors / shards / pytorch_model.bin), or one such file.
    kind: one of KINDS to insist on it; None accepts any.
    dtype: parameter dtype; None keeps the file's.
    model_config: the base model's; Hydra++ heads are checked against it (and an upstream
      prefix-mlp checkpoint, whose attention sizes only the base config gives, needs it).
    Every user-caused problem raises EntmtpError with a one-line message.
    """
    if kind is not None and kind not in KINDS:
        raise EntmtpError(f"heads kind must be one of {', '.join(KINDS)}, not {kind!r}")
    source = Path(path)
    if source.is_dir():
        heads = _load_dir(source, hidden_size, vocab_size, dtype, model_config)
    elif source.is_file():
        heads = _load_file(source, source.parent, hidden_size, vocab_size, dtype, model_config)
    else:
        raise EntmtpError(f"heads path {source} does not exist")
    if kind is not None and heads.kind != kind:
        raise EntmtpError(f"heads at {source} are {heads.kind} heads, not {kind}")
    return heads


def _load_dir(folder: Path, hidden_size: int, vocab_size: int, dtype: Optional[torch.dtype],
              model_config: Optional[ModelConfig]) -> Heads:
    if (folder / CONFIG_NAME).is_file():
        return _load_ours(folder, hidden_size, vocab_size, dtype, model_config)
    for name in _FILE_CANDIDATES:
        if (folder / name).is_file():
            return _load_file(folder / name, folder, hidden_size, vocab_size, dtype, model_config)
    files = _medusa2_files(folder)
    if files:
        tensors = _medusa2_tensors(files)
        if not tensors:
            raise EntmtpError(f"model folder {folder} has no {_MEDUSA_PREFIX}* keys: not a Medusa-2 checkpoint")
        return _medusa_from_tensors(files[0], tensors, hidden_size, vocab_size, dtype)
    raise EntmtpError(
        f"no draft heads in {folder}: expected {CONFIG_NAME}, {', '.join(_FILE_CANDIDATES)}, "
        "or a Medusa-2 checkpoint (model.safetensors with medusa_head.* keys)")


def _load_file(path: Path, folder: Path, hidden_size: int, vocab_size: int, dtype: Optional[torch.dtype],
               model_config: Optional[ModelConfig]) -> Heads:
    if path.suffix not in (".safetensors", ".pt", ".bin", ".pth"):
        raise EntmtpError(f"heads file {path}: expected a .safetensors, .pt or .bin file")
    tensors = read_tensors(path, "heads file", _medusa2_names)
    if not tensors:
        raise EntmtpError(f"heads file {path} holds no tensors")
    if _is_hydra(tensors):
        return _hydra_from_tensors(path, tensors, _read_hydra_config(folder),
                                   hidden_size, vocab_size, dtype, model_config)
    if any(k.startswith(_MEDUSA_PREFIX) for k in tensors):
        # A Medusa-2 full checkpoint file: read the head keys only.
        tensors = {k[len(_MEDUSA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MEDUSA_PREFIX)}
    return _medusa_from_tensors(path, tensors, hidden_size, vocab_size, dtype)
