"""What a decode returns and how it samples: StepRecord per step, GenerationResult per prompt, SamplingConfig."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

TokenCallback = Callable[[list[int]], None]


@dataclasses.dataclass
class StepRecord:
    accepted: int            # drafted tokens accepted this step (0 for ar)
    tree: Optional[str]      # tree used, None for ar
    root_entropy: Optional[float]
    seconds: float
    confidence: Optional[float] = None       # head 0's top-1 probability at the root (drafting steps)
    path_value: Optional[float] = None       # product of the top-1 probabilities along the all-0 chain
    scheduler_seconds: Optional[float] = None  # time spent choosing the tree (policies only)
    modeled_ms: Optional[float] = None       # the chosen tree's calibrated step time (policies only)
    signals: Optional[tuple] = None          # (entropy EMA, accept EMA, confidence) seen before the step
    accepted_ranks: Optional[tuple] = None   # the accepted path as ranks per depth, () if none
    fitted_nodes: Optional[int] = None       # nodes drafted when `tree` was cut to fit the context's end


@dataclasses.dataclass
class GenerationResult:
    prompt_tokens: int
    token_ids: list[int]
    steps: int
    seconds: float           # prefill + decode, wall clock
    prefill_seconds: float
    method: str
    stop_reason: str         # "eos", "max_new_tokens" or "context"
    records: list[StepRecord] = dataclasses.field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        decode = self.seconds - self.prefill_seconds
        return self.n_tokens / decode if decode > 0 else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.n_tokens / self.steps if self.steps else 0.0


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0   # 0 = greedy
    seed: Optional[int] = None

    def generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.temperature <= 0:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed if self.seed is not None else torch.seed())
        return gen
