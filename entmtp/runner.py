"""Turn a method name and its options into a decoder for a loaded model."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from .errors import EntmtpError, UsageError
from .generate import ArDecoder
from .loader import LoadedModel

METHODS = ("ar", "medusa", "hydra")
DEFAULT_TREE = "mc_sim_7b_63"
HEADS_DIR = Path(__file__).parent / "data" / "heads"


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    heads: Optional[str] = None     # heads file or folder; None = the ones shipped for the model
    tree: Optional[str] = None      # tree name or JSON path; None = DEFAULT_TREE
    typical: bool = False           # typical acceptance (approximate) instead of exact sampling
    temperature: float = 0.0
    top_k: int = 10


def shipped_heads(loaded: LoadedModel, kind: str) -> Path:
    """The heads trained for this model and shipped in the package, by kind."""
    folder = HEADS_DIR / loaded.folder.name / kind
    if not folder.is_dir():
        raise EntmtpError(f"no trained {kind} heads are shipped for model {loaded.folder.name!r}; "
                          f"pass --heads PATH")
    return folder


def make_decoder(method: str, loaded: LoadedModel, options: MethodOptions = MethodOptions()):
    if method == "ar":
        return ArDecoder(loaded.model)
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    from .heads import load_heads
    from .speculative import SpeculativeDecoder, VerifyConfig
    from .trees import load_tree

    cfg = loaded.config
    heads_path = options.heads or shipped_heads(loaded, method)
    heads = load_heads(heads_path, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, kind=method)
    tree = load_tree(options.tree or DEFAULT_TREE)
    if options.temperature <= 0:
        verify = VerifyConfig("greedy")
    else:
        verify = VerifyConfig("typical" if options.typical else "sample", options.temperature)
    return SpeculativeDecoder(loaded.model, heads, tree, verify, top_k=options.top_k,
                              method=method if verify.mode != "typical" else f"{method}+typical")
