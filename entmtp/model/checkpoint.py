"""Reading and checking weight files: one reader and one checker for the model
loader (entmtp.model.loader) and the heads loaders (entmtp.heads).

Every failure is the user's file being wrong, so each becomes one EntmtpError
naming the file; `what` says which kind of file ("heads file", "model folder").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch

from entmtp.errors import EntmtpError

# Buffers some exporters save that carry nothing a model needs (RoPE is recomputed).
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)

# How many offending key names an error message lists before "…".
KEYS_SHOWN = 5

Select = Callable[[list[str]], Iterable[str]]


def first_few(names: list[str]) -> str:
    shown = ", ".join(names[:KEYS_SHOWN])
    return shown + (f", … ({len(names)} in all)" if len(names) > KEYS_SHOWN else "")


def natural_key(name: str) -> list:
    """Sort key that orders "h.2" before "h.10"."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_tensors(path: Path, what: str = "weights file", select: Optional[Select] = None,
                 dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch-pickle file, those named by
    select(all names) when given, each cast to `dtype` when given (one tensor at a
    time, so peak memory stays near one copy)."""
    pick = select or (lambda names: names)
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                # Only the selected tensors are read (a full checkpoint's base weights are not).
                return {k: cast(f.get_tensor(k)) for k in pick(list(f.keys()))}
        # weights_only: never run pickled code from a downloaded file. mmap keeps
        # Medusa-2 shards (base weights + heads) from being read in full.
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) pickles cannot be mmapped
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EntmtpError(f"{what} {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - parsers raise many types for bad bytes
        kind = "safetensors" if path.suffix == ".safetensors" and what == "weights file" else what
        raise EntmtpError(f"cannot read {kind} {path}: {_reason(exc)}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise EntmtpError(f"{what} {path} does not hold a state_dict of named tensors")
    return {k: cast(state[k]) for k in pick(list(state))}


def check_tensors(source: str, tensors: Mapping[str, torch.Tensor],
                  expected: Mapping[str, tuple[int, ...]]) -> None:
    """Exact key set and shapes; `source` names the file ("heads file X")."""
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise EntmtpError(f"{source} has unexpected keys: {first_few(unexpected)}")
    missing = sorted(set(expected) - set(tensors), key=natural_key)
    if missing:
        raise EntmtpError(f"{source} is missing keys: {first_few(missing)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise EntmtpError(f"{source}: {name} has shape {list(tensors[name].shape)}, "
                              f"expected {list(shape)}")
