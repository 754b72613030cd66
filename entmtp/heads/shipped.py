"""The heads that ship with entmtp for a model, loading a model's heads, and their fingerprint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from entmtp.errors import EntmtpError, UsageError
from entmtp.heads import shortlist
from entmtp.heads.formats import load_heads
from entmtp.heads.shortlist import DraftVocab
from entmtp.model.loader import LoadedModel

HEADS_DIR = Path(__file__).resolve().parents[1] / "data" / "heads"


def shipped_heads(loaded: LoadedModel, kind: str) -> Path:
    """The heads trained for this model and shipped in the package, by kind."""
    folder = HEADS_DIR / loaded.folder.name / kind
    if not folder.is_dir():
        raise EntmtpError(f"no trained {kind} heads are shipped for model {loaded.folder.name!r}; "
                          f"pass --heads PATH")
    return folder


def heads_folder(loaded: LoadedModel, kind: str, path: Optional[str] = None) -> Path:
    """The folder holding these heads (a file's folder for upstream checkpoints)."""
    if path is None:
        return shipped_heads(loaded, kind)
    path = Path(path)
    return path if path.is_dir() else path.parent


def draft_vocab_size(spec: Optional[str]) -> Optional[int]:
    """Checks a --draft-vocab value: None/"off" and "heads" -> None, "N" -> N (> 0)."""
    if spec in (None, "off", "heads"):
        return None
    if not spec.isdigit() or int(spec) < 1:
        raise UsageError(f"--draft-vocab must be off, heads or a number of tokens, not {spec!r}")
    return int(spec)


def load_draft_vocab(loaded: LoadedModel, kind: str, path: Optional[str], spec: Optional[str]) -> Optional[DraftVocab]:
    """`spec`: None or "off" (the full vocabulary), "heads" (the list stored beside the
    heads) or N (its N most frequent ids)."""
    size = draft_vocab_size(spec)
    if spec in (None, "off"):
        return None
    folder = heads_folder(loaded, kind, path)
    vocab = shortlist.load(folder)
    if vocab is None:
        raise EntmtpError(f"no draft vocabulary is stored with the {kind} heads in {folder}; "
                          f"make one with entmtp heads shortlist")
    if size is not None and size > len(vocab.ids):
        raise UsageError(f"--draft-vocab {size}: the list stored with the {kind} heads holds {len(vocab.ids)} "
                         f"tokens; ask for at most that many, or make a longer one with entmtp heads shortlist")
    return vocab if size is None else vocab.truncated(size)


def load_model_heads(loaded: LoadedModel, kind: str, path: Optional[str] = None):
    """Heads of `kind` for this model: from `path`, or the shipped ones; checked against its sizes."""
    cfg = loaded.config
    return load_heads(path or shipped_heads(loaded, kind), hidden_size=cfg.hidden_size,
                      vocab_size=cfg.vocab_size, kind=kind, model_config=cfg)


def heads_fingerprint(heads) -> str:
    """A short checksum of the heads' weights: a bank is only valid for these heads."""
    total, absolute = 0.0, 0.0
    for tensor in heads.state_dict().values():
        if tensor is None or not torch.is_floating_point(tensor):
            continue
        t = tensor.detach().double()
        total += float(t.sum())
        absolute += float(t.abs().sum())
    return f"{heads.kind}-{heads.n_heads}x{heads.n_layers}-{total:.6e}-{absolute:.6e}"


def calibration_heads(loaded: LoadedModel, provenance: dict, heads_path: Optional[str] = None):
    """The heads a calibration was made with, loaded for `loaded`; refuses another
    model or heads whose weights differ (fingerprint)."""
    if loaded.folder.name != provenance["model"]["name"]:
        raise EntmtpError(f"the calibration is for model {provenance['model']['name']!r}, "
                          f"not {loaded.folder.name!r} (pass --model)")
    heads = load_model_heads(loaded, provenance["heads"]["kind"], heads_path)
    if heads_fingerprint(heads) != provenance["heads"]["fingerprint"]:
        raise EntmtpError("the calibration was made with other heads than these (fingerprints differ)")
    return heads
