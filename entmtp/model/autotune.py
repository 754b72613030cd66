"""Measured choices between kernels, cached per machine: the bf16 GEMM
(entmtp.model.linear) and the attention of T new tokens (entmtp.model.attention).

A choice is named by a key ("960x576@16"); the first time a key is asked for,
`measure()` times every backend on data of that shape (round-robin, medians) and
the fastest is kept in memory and in `$ENTMTP_HOME/<name>/<machine fingerprint>.json`
(entmtp.machine), so the next process on the same machine and setup reuses it.
An environment variable forces one backend; nothing is measured inside a
torch.compile trace.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from entmtp import machine
from entmtp.errors import EntmtpError
from entmtp.jsonfile import write_json
from entmtp.model.registry import cache_root
from entmtp.timing import interleaved, seconds_per_call


class MeasuredChoice:
    def __init__(self, name: str, backends: Sequence[str], env: str, default: str):
        self.name, self.backends, self.env, self.default = name, tuple(backends), env, default
        self._plan: dict[str, str] = {}
        self._loaded = False

    def _file(self) -> Path:
        return cache_root() / self.name / f"{machine.fingerprint()}.json"

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            stored = json.loads(self._file().read_text(encoding="utf-8"))
            self._plan.update({k: v for k, v in stored.items() if v in self.backends})
        except (OSError, ValueError):
            pass  # nothing cached yet (or a torn file): measure again

    def _save(self) -> None:
        try:
            write_json(self._file(), self._plan, indent=0, sort_keys=True)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next run

    def forced(self) -> Optional[str]:
        value = os.environ.get(self.env, "auto")
        if value == "auto":
            return None
        if value not in self.backends:
            raise EntmtpError(f"{self.env} must be auto or one of {', '.join(self.backends)}, not {value!r}")
        return value

    def choose(self, key: str, measure: Callable[[], Mapping[str, float]]) -> str:
        """The backend for `key`; measure() -> {backend: seconds} runs once per key and machine."""
        forced = self.forced()
        if forced is not None:
            return forced
        got = self._plan.get(key)
        if got is None:
            self._load()
            got = self._plan.get(key)
        if got is None:
            if torch.compiler.is_compiling():
                return self.default  # never time inside a trace
            got = self.record(key, measure())
        return got

    def record(self, key: str, seconds: Mapping[str, float]) -> str:
        best = min(seconds, key=seconds.get)
        self._plan[key] = best
        self._save()
        return best

    def plan(self) -> dict[str, str]:
        """The backend chosen so far per key (this process's and the cached ones)."""
        self._load()
        return dict(self._plan)


def time_backends(calls: Mapping[str, Callable[[], object]], repeats: int = 7,
                  device: torch.device | str = "cpu", clear_margin: float = 4.0) -> dict[str, float]:
    """Median seconds per call of each backend, timed round-robin after a warm-up call.

    When one backend is more than `clear_margin` times slower than another already on
    a second call, that call decides: on a CPU without native bf16 torch's matmul can
    take seconds at hundreds of rows, and repeating it would only cost time."""
    for fn in calls.values():
        fn()  # warm-up: thread pool, allocator, lazy init
    first = {name: seconds_per_call(fn, device) for name, fn in calls.items()}
    if max(first.values()) > clear_margin * min(first.values()):
        return first
    samples = interleaved({name: (lambda fn=fn: seconds_per_call(fn, device)) for name, fn in calls.items()},
                          repeats, warmup=0)
    return {name: statistics.median(values) for name, values in samples.items()}
