"""Turn a method name into a decoder for a loaded model."""
from __future__ import annotations

from .errors import UsageError
from .generate import ArDecoder
from .loader import LoadedModel

METHODS = ("ar",)


def make_decoder(method: str, loaded: LoadedModel):
    if method == "ar":
        return ArDecoder(loaded.model)
    raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
