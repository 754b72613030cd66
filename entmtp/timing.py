"""The one timing harness: the cost curve (entmtp.tune.timing), `bench-step`
and `kernels bench` all measure contenders round-robin with it.

Round-robin (every contender once per round, rounds repeated) means a slow
spell of a shared machine falls on every contender alike; callers report medians.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it; free on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device | str, calls: int = 1) -> float:
    """Mean wall-clock seconds of `calls` back-to-back calls of fn, synced before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def interleaved(contenders: Mapping[Any, Callable[[], float]], repeats: int,
                warmup: int = 1) -> dict[Any, list[float]]:
    """Each contender returns one measurement (seconds, ms, ...) per call; run
    `warmup` discarded rounds, then `repeats` rounds of one call each, in order.
    Returns the kept measurements per contender."""
    samples: dict[Any, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + repeats):
        for name, measure in contenders.items():
            value = measure()
            if round_index >= warmup:
                samples[name].append(value)
    return samples
