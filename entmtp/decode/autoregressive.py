"""Plain autoregressive decoding: the baseline every speculative method must match.

The loop reads as the same named steps the speculative decoder uses:
prefill -> (propose: nothing to propose) -> verify (one forward of one token)
-> accept (pick the next token) -> commit (advance the cache length).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import torch

from entmtp.errors import EntmtpError
from entmtp.model.llama import KVCache, LlamaModel

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


def pick_token(logits: torch.Tensor, sampling: SamplingConfig,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [V] -> token id tensor [] (argmax, or a sample at temperature > 0)."""
    if sampling.temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


def check_prompt_fits(model: LlamaModel, prompt_len: int) -> int:
    """Return the context length; reject empty prompts and prompts that fill it."""
    context = model.config.max_position_embeddings
    if prompt_len == 0:
        raise EntmtpError("the prompt is empty after tokenization")
    if prompt_len >= context:
        raise EntmtpError(f"the prompt has {prompt_len} tokens but the model's context is {context}")
    return context


class ArDecoder:
    """Greedy or sampled token-by-token decoding with the preallocated cache."""

    method = "ar"

    def __init__(self, model: LlamaModel):
        self.model = model
        self._cache: Optional[KVCache] = None

    def prefill(self, cache: KVCache, prompt: torch.Tensor) -> torch.Tensor:
        """Run the prompt [1, P]; return the last position's logits [V]."""
        positions = torch.arange(prompt.shape[1], device=prompt.device).unsqueeze(0)
        _, logits = self.model(prompt, positions, cache, 0, logits_rows=slice(-1, None))
        return logits[0, -1]

    def verify(self, cache: KVCache, token: torch.Tensor, cache_len: int) -> torch.Tensor:
        """One forward of the single newest token; return its logits [V]."""
        ids = token.view(1, 1)
        positions = torch.full((1, 1), cache_len, dtype=torch.long, device=ids.device)
        _, logits = self.model(ids, positions, cache, cache_len)
        return logits[0, -1]

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...],
                 sampling: SamplingConfig = SamplingConfig(),
                 on_tokens: Optional[TokenCallback] = None) -> GenerationResult:
        model = self.model
        context = check_prompt_fits(model, len(prompt_ids))
        budget = min(max_new_tokens, context - len(prompt_ids))
        cache = self._cache = model.reuse_cache(self._cache, len(prompt_ids) + budget)
        generator = sampling.generator(model.device)
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
        eos = set(eos_ids)

        start = time.perf_counter()
        logits = self.prefill(cache, prompt)
        prefill_seconds = time.perf_counter() - start
        cache_len = len(prompt_ids)
        out: list[int] = []
        steps = 0
        stop = "max_new_tokens" if budget == max_new_tokens else "context"
        while True:
            token = pick_token(logits, sampling, generator)          # accept
            token_id = int(token)
            out.append(token_id)
            if on_tokens is not None:
                on_tokens([token_id])
            if token_id in eos:
                stop = "eos"
                break
            if len(out) >= budget:
                break
            logits = self.verify(cache, token, cache_len)             # verify
            cache_len += 1                                            # commit
            steps += 1
        seconds = time.perf_counter() - start
        # The first token comes from the prefill forward: count it as a step.
        return GenerationResult(len(prompt_ids), out, steps + 1, seconds, prefill_seconds,
                                self.method, stop)
