"""One spelling of a scheduler choice: SchedulerSpec("rate", "accept").

Printed as "rate:accept" (a bank's `calibration_rates` keys and `recommended`
entry, the canonical form); parsed from that or from the bench method form
"rate-accept"; `--scheduler rate --signal accept` on the command line builds the
same spec. A spec without a signal means "rate with the bank's recommended
signal" for the rate scheduler; the other schedulers take no signal.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from entmtp.errors import UsageError
from entmtp.schedule.signals import SIGNALS

SCHEDULERS = ("entropy", "rate", "static-best", "static", "oracle")
# "now": head 0's top-1 probability at this step's root, read after head 0 runs
# (PeekPolicy); "all": entropy x accept; the lagged SIGNALS are known before the step.
RATE_SIGNALS = SIGNALS + ("all", "now")


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    scheduler: str
    signal: Optional[str] = None

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {self.scheduler!r}; available: {', '.join(SCHEDULERS)}")
        if self.signal is not None:
            if self.scheduler != "rate":
                raise UsageError(f"the {self.scheduler} scheduler takes no signal (got {self.signal!r})")
            if self.signal not in RATE_SIGNALS:
                raise UsageError(f"unknown signal {self.signal!r}; available: {', '.join(RATE_SIGNALS)}")

    @classmethod
    def parse(cls, text: str) -> "SchedulerSpec":
        """'rate:accept' or 'rate-accept' -> (rate, accept); 'static-best' -> (static-best, None)."""
        if text in SCHEDULERS:
            return cls(text)
        for separator in (":", "-"):
            head, sep, signal = text.partition(separator)
            if sep and head == "rate" and signal:
                return cls("rate", signal)
        raise UsageError(f"unknown scheduler {text!r}; available: {', '.join(SCHEDULERS)}, "
                         f"or rate:SIGNAL with SIGNAL one of {', '.join(RATE_SIGNALS)}")

    def __str__(self) -> str:
        return self.scheduler if self.signal is None else f"{self.scheduler}:{self.signal}"

    @property
    def method(self) -> str:
        """The bench method and run-label form: 'rate-accept', 'static-best'."""
        return self.scheduler if self.signal is None else f"{self.scheduler}-{self.signal}"

    def with_signal(self, signal: Optional[str]) -> "SchedulerSpec":
        """A rate spec without a signal takes `signal` (the bank's recommended one)."""
        if self.scheduler != "rate" or self.signal is not None or signal is None:
            return self
        return SchedulerSpec("rate", signal)
