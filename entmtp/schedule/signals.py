"""Per-step signals, from work a step already does (none costs a forward).

  entropy     bias-corrected EMA of the base model's next-token entropy at the
              step's root (nats; from the fused entropy op of the verify pass,
              and from the prefill logits before the first step);
  accept      bias-corrected EMA of accepted draft length (updated only on steps
              that draft: a root-only step accepts nothing by construction);
  confidence  the first head's top-1 probability at the last drafting step's root
              (one step stale: the heads run after the tree is chosen);
  probe       a linear function of this step's hidden state (the heads' input),
              fit at calibration to predict accepted length: known before the
              heads run (entmtp.tune.probe).

The EMA is Adam-style: m_t = beta m_{t-1} + (1 - beta) x_t with beta = 1 - 1/W,
reported as m_t / (1 - beta^t) (the bias correction of Adam, Kingma & Ba 2015);
reset for every prompt."""
from __future__ import annotations

import dataclasses
from typing import Optional

from entmtp.errors import UsageError

SIGNALS = ("entropy", "accept", "confidence", "probe")


DEFAULT_WINDOW = 4


class BiasCorrectedEMA:
    def __init__(self, window: float):
        if window < 1:
            raise UsageError(f"EMA window must be >= 1 step, got {window}")
        self.beta = 1.0 - 1.0 / window
        self.reset()

    def reset(self) -> None:
        self.mean = 0.0
        self.count = 0

    def update(self, x: float) -> float:
        self.mean = self.beta * self.mean + (1.0 - self.beta) * x
        self.count += 1
        return self.value

    @property
    def value(self) -> Optional[float]:
        if self.count == 0:
            return None
        return self.mean / (1.0 - self.beta ** self.count)


@dataclasses.dataclass(frozen=True)
class Signals:
    """What a policy sees before a step; None = not observed yet in this prompt."""

    entropy: Optional[float] = None
    accept: Optional[float] = None
    confidence: Optional[float] = None
    probe: Optional[float] = None     # the bank's linear probe on this step's hidden state

    def get(self, name: str) -> Optional[float]:
        return getattr(self, name)


class SignalTracker:
    def __init__(self, window: float = DEFAULT_WINDOW):
        self.window = window
        self._entropy = BiasCorrectedEMA(window)
        self._accept = BiasCorrectedEMA(window)
        self._confidence: Optional[float] = None

    def reset(self) -> None:
        self._entropy.reset()
        self._accept.reset()
        self._confidence = None

    def observe_entropy(self, entropy: float) -> None:
        self._entropy.update(entropy)

    def observe_draft(self, accepted: int, confidence: Optional[float]) -> None:
        """After a step that drafted: its accepted length and head-0 top-1 probability."""
        self._accept.update(float(accepted))
        if confidence is not None:
            self._confidence = confidence

    def signals(self) -> Signals:
        return Signals(self._entropy.value, self._accept.value, self._confidence)
