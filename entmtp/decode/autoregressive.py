"""Plain autoregressive decoding: the baseline every speculative method must match.

The loop reads as the same named steps the speculative decoder uses:
prefill -> (propose: nothing to propose) -> verify (one forward of one token)
-> accept (pick the next token) -> commit (advance the cache length).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from entmtp.decode.types import GenerationResult, SamplingConfig, TokenCallback
from entmtp.errors import EntmtpError
from entmtp.model.llama import KVCache, LlamaModel


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
