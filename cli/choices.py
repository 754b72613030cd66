"""The fixed choices of the command line as Enums, so Typer lists them in --help
and rejects anything else before a model loads. Written out here (not imported
from entmtp, whose modules pull in torch) and pinned to the package's own lists by
tests/test_cli.py."""
from __future__ import annotations

import enum


class HeadKind(str, enum.Enum):
    """entmtp.defaults.HEAD_KINDS"""
    hydra = "hydra"
    medusa = "medusa"
    hydrapp = "hydrapp"


class TrainLoss(str, enum.Enum):
    """entmtp.heads.train.LOSSES"""
    teacher = "teacher"
    hard = "hard"


class TrainDtype(str, enum.Enum):
    """entmtp.heads.train.TRAIN_DTYPES"""
    fp32 = "fp32"
    bf16 = "bf16"


class Scheduler(str, enum.Enum):
    """entmtp.schedule.spec.SCHEDULERS"""
    rate = "rate"
    entropy = "entropy"
    static_best = "static-best"
    static = "static"
    oracle = "oracle"


class Signal(str, enum.Enum):
    """entmtp.schedule.spec.RATE_SIGNALS"""
    now = "now"
    entropy = "entropy"
    accept = "accept"
    confidence = "confidence"
    probe = "probe"
    all = "all"


def value(choice: enum.Enum | None) -> str | None:
    return None if choice is None else choice.value
