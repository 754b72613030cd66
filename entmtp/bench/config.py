"""What one `entmtp bench` run measures (BenchConfig: tasks, methods, prompts, tokens,
precision), parsed from the command line."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from entmtp import tasks
from entmtp.bench.contenders import (
    parse_method,
)
from entmtp.defaults import HEAD_KINDS
from entmtp.errors import UsageError


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    out: Path
    model: str | None = None
    data: Path | None = None
    split: str = "evaluation"
    limit: int | None = None
    max_new_tokens: int = 128
    seed: int = 0
    dtype: str = "bf16"
    device: str = "cpu"
    exact_check: bool = False
    resume: bool = False
    plot: bool = False
    analysis: bool = False
    cost_curve: Path | None = None     # bank sources: derive on this curve file instead of the machine's
    heads: tuple[tuple[str, str], ...] = ()  # (kind, path): these heads instead of the shipped ones

    def settings(self) -> dict:
        """What must match for --resume to add to an existing results.jsonl."""
        return {"model": self.model, "data": str(self.data) if self.data else None, "split": self.split,
                "max_new_tokens": self.max_new_tokens, "dtype": self.dtype, "device": self.device,
                "cost_curve": str(self.cost_curve) if self.cost_curve else None,
                **({"heads": dict(self.heads)} if self.heads else {})}


def parse_tasks(text: str) -> tuple[str, ...]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return tasks.TASKS
    for name in names:
        if name not in tasks.TASKS:
            raise UsageError(f"unknown task {name!r}; available: {', '.join(tasks.TASKS)}, all")
    if not names:
        raise UsageError("--task is empty")
    return tuple(dict.fromkeys(names))


def parse_heads(text: str | None) -> tuple[tuple[str, str], ...]:
    """--heads "hydrapp=DIR,hydra=DIR" -> (("hydrapp", "DIR"), ...); each kind once, each path there."""
    if not text:
        return ()
    pairs = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        kind, sep, path = item.partition("=")
        if not sep or kind not in HEAD_KINDS or not path:
            raise UsageError(f"--heads takes KIND=PATH items with KIND one of {', '.join(HEAD_KINDS)}, not {item!r}")
        if not Path(path).exists():
            raise UsageError(f"--heads {kind}={path}: {path} does not exist")
        pairs.append((kind, path))
    kinds = [k for k, _ in pairs]
    if len(set(kinds)) != len(kinds):
        raise UsageError("--heads names a kind twice")
    return tuple(pairs)


def parse_methods(text: str, exact_check: bool) -> tuple[str, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods is empty")
    for name in names:
        parse_method(name)
    if exact_check:
        # Exactness is measured against ar's tokens, so ar runs first on every prompt.
        names = ["ar"] + [n for n in names if n != "ar"]
    return tuple(dict.fromkeys(names))
