"""The self-distillation corpus of `entmtp heads train`: a seeded, recorded sample of training
prompts, and the base model's own greedy continuations of them with its final hidden states
(generated in batches of equal-length prompts, which is what makes it affordable on a CPU)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console
from rich.progress import Progress

from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.corpora import load_sharegpt_first_turns, stdlib_code_prompts
from entmtp.model.loader import LoadedModel
from entmtp.outputs import write_atomically
from entmtp.tasks import load_split


# ------------------------------------------------------------------- prompts
def select_prompts(cfg) -> list[dict]:
    """A seeded sample of prompts; recorded in prompts.json (source and id of
    each) so benchmark splits can be checked against it."""
    rng = random.Random(cfg.seed)
    chosen = []
    if cfg.sharegpt_prompts:
        pool = load_sharegpt_first_turns()
        for pid, text in _sample_outside_bench(rng, pool, cfg.sharegpt_prompts, cfg.seed):
            chosen.append({"source": "sharegpt", "id": pid, "prompt": text[:2000]})
    if cfg.code_prompts:
        pool = stdlib_code_prompts()
        for pid, text in rng.sample(pool, min(cfg.code_prompts, len(pool))):
            chosen.append({"source": "stdlib", "id": pid, "prompt": text})
    if not chosen:
        raise EntmtpError("no training prompts selected (are the prompt sources empty?)")
    return chosen


def _sample_outside_bench(rng: random.Random, pool: list[tuple[str, str]], count: int,
                          seed: int) -> list[tuple[str, str]]:
    """`count` ShareGPT prompts, none in the recorded bench splits (calibration or evaluation):
    heads trained on a bench prompt's continuation would inflate every number measured on it.
    The sample is drawn as it always was, then each bench prompt in it is replaced from the
    rest of the pool by a stream of its own, so `rng` draws as before (the code prompts after
    it too) and a seed whose sample held no bench prompt (the shipped heads': the splits were
    made without their ids) picks what it always picked."""
    bench = {pid for split in ("calibration", "evaluation") for pid in load_split("sharegpt")[split]}
    picked = rng.sample(pool, min(count, len(pool)))
    kept = [p for p in picked if p[0] not in bench]
    if len(kept) < len(picked):
        taken = {pid for pid, _ in picked}
        rest = [p for p in pool if p[0] not in taken and p[0] not in bench]
        kept += random.Random(f"{seed}-outside-bench").sample(rest, min(len(picked) - len(kept), len(rest)))
    return kept


# -------------------------------------------------------------------- corpus
def _chat_wrapper(tokenizer) -> tuple[list[int], list[int]]:
    """The token prefix and suffix every one-turn chat prompt shares (system and
    user header; end of turn and assistant header), found by comparing two."""
    a, b = tokenizer.encode_chat("alpha beta gamma"), tokenizer.encode_chat("7 + 3 = ?")
    n_prefix = 0
    while n_prefix < min(len(a), len(b)) and a[n_prefix] == b[n_prefix]:
        n_prefix += 1
    n_suffix = 0
    while n_suffix < min(len(a), len(b)) - n_prefix and a[-1 - n_suffix] == b[-1 - n_suffix]:
        n_suffix += 1
    return a[:n_prefix], a[len(a) - n_suffix:]


def _equal_length_batches(prompt_ids: list[list[int]], batch_size: int, wrapper) -> list[list[tuple[int, list[int]]]]:
    """Group prompts of similar length and trim each group's user text to the
    group's shortest, so a batch decodes with no padding (and no padding mask).
    Trimming only shortens the context a continuation starts from: the corpus
    stays the base model's own greedy text. Returns [(prompt index, ids)]."""
    prefix, suffix = wrapper
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        length = len(prompt_ids[group[0]])
        batch = []
        for i in group:
            ids = prompt_ids[i]
            if len(ids) > length:
                content = ids[len(prefix):len(ids) - len(suffix)]
                ids = prefix + content[:length - len(prefix) - len(suffix)] + suffix
            batch.append((i, ids))
        batches.append(batch)
    return batches


@torch.inference_mode()
def _generate_batch(model, prompts: torch.Tensor, gen_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of B equal-length prompts [B, P] in one batch.
    Returns tokens [B, P + n] and final hidden states [B, P + n - 1, H] (the
    last token is never fed, and no head target needs its hidden state)."""
    batch, n_prompt = prompts.shape
    cache = model.new_cache(batch, n_prompt + gen_tokens)
    positions = torch.arange(n_prompt).expand(batch, -1)
    hidden, logits = model(prompts, positions, cache, 0, logits_rows=slice(-1, None))
    tokens, hiddens = [prompts], [hidden]
    next_token = logits[:, -1].argmax(-1, keepdim=True)                # [B, 1]
    for step in range(gen_tokens - 1):
        tokens.append(next_token)
        at = n_prompt + step
        hidden, logits = model(next_token, torch.full((batch, 1), at), cache, at)
        hiddens.append(hidden)
        next_token = logits[:, -1].argmax(-1, keepdim=True)
    tokens.append(next_token)
    return torch.cat(tokens, 1), torch.cat(hiddens, 1)


def corpus_prompt_ids(loaded: LoadedModel, prompts: list[dict], gen_tokens: int) -> list[list[int]]:
    """Each prompt's chat tokens (its last 512), checked to leave room for the continuation."""
    prompt_ids = [loaded.tokenizer.encode_chat(record["prompt"])[-512:] for record in prompts]
    context = loaded.config.max_position_embeddings
    longest = max(len(ids) for ids in prompt_ids)
    if longest + gen_tokens > context:
        raise UsageError(f"--gen-tokens {gen_tokens} plus the longest prompt ({longest} tokens) exceed "
                         f"the model's context of {context} tokens")
    return prompt_ids


def build_corpus(loaded: LoadedModel, prompts: list[dict], gen_tokens: int, console: Console,
                 batch_size: int = 16, parts: Optional[Path] = None) -> list[dict]:
    """Per prompt: token ids (prompt + greedy continuation, cut after the first
    EOS), the index of the last prompt position, and the final hidden states
    [L - 1, H] (fp16 to keep the corpus small). Prompts decode in batches of
    equal length, which is what makes a large corpus affordable on a CPU.

    parts: a folder where each finished batch is saved (`{k}.pt`, atomically) and from
    which an interrupted run's batches are read back instead of decoded again. The
    batches are a function of the prompts alone, so batch k is the same on every run; a
    part of other prompts or another dtype (--dtype changed) is decoded again, never mixed in."""
    tokenizer, model = loaded.tokenizer, loaded.model
    prompt_ids = corpus_prompt_ids(loaded, prompts, gen_tokens)
    eos = set(loaded.eos_token_ids)
    sequences: list[dict | None] = [None] * len(prompts)
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("generating continuations", total=len(prompts))
        for k, batch in enumerate(_equal_length_batches(prompt_ids, batch_size, _chat_wrapper(tokenizer))):
            part = None if parts is None else parts / f"{k}.pt"
            done = _read_part(part, [index for index, _ in batch], str(model.dtype))
            if done is None:
                done = _decode_batch(model, batch, gen_tokens, eos)
                if part is not None:
                    saved = {"dtype": str(model.dtype), "sequences": done}
                    write_atomically(part, lambda tmp: torch.save(saved, tmp))
            for (index, _), sequence in zip(batch, done):
                sequences[index] = sequence
            progress.advance(task, len(batch))
    return sequences


def _decode_batch(model, batch: list[tuple[int, list[int]]], gen_tokens: int, eos: set[int]) -> list[dict]:
    ids = torch.tensor([row for _, row in batch], device=model.device)
    tokens, hidden = _generate_batch(model, ids, gen_tokens)
    n_prompt = ids.shape[1]
    done = []
    for row in range(len(batch)):
        full = tokens[row].tolist()
        cut = next((n_prompt + k + 1 for k, t in enumerate(full[n_prompt:]) if t in eos), len(full))
        done.append({"tokens": torch.tensor(full[:cut]), "start": n_prompt - 1, "prompt_index": batch[row][0],
                     "hidden": hidden[row, :cut - 1].to(torch.float16).cpu()})
    return done


def _read_part(part: Optional[Path], indices: list[int], dtype: str) -> Optional[list[dict]]:
    """A saved batch, if it is there, readable, of these prompts and decoded in this dtype;
    else None (decode it again)."""
    if part is None or not part.is_file():
        return None
    try:
        saved = torch.load(part, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged part is decoded again, whatever torch raised
        return None
    done = saved.get("sequences") if isinstance(saved, dict) and saved.get("dtype") == dtype else None
    keys = {"tokens", "start", "hidden", "prompt_index"}
    if not isinstance(done, list) or len(done) != len(indices) or not all(
            isinstance(d, dict) and keys <= d.keys() and d["prompt_index"] == i for d, i in zip(done, indices)):
        return None
    return done


def saved_parts(parts: Path) -> int:
    """How many corpus batches an interrupted run saved in `parts`."""
    return len(list(parts.glob("*.pt"))) if parts.is_dir() else 0
