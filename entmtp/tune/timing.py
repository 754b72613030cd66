"""This machine's cost curve: ms of one decode step (propose + verify + accept) per tree, timed interleaved."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from entmtp import ops
from entmtp.timing import interleaved, seconds_per_call
from entmtp.trees.growth import grow_trees
from entmtp.trees.tree import Tree, tree_from_paths

COST_SIZES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def measure_step_ms(decoder, trees: Sequence[Tree], context: int = 256, repeats: int = 7,
                    with_peek: bool = False, budget_s: Optional[float] = None,
                    progress: Optional[Callable[[int, int], None]] = None) -> tuple[list[float], Optional[float]]:
    """Median ms of one decode step (propose + verify + accept) per tree, at a
    `context`-token prefix of random ids. Trees are timed round-robin, one step
    each per round after a warm-up round, so a slow spell of a shared machine
    falls on every tree alike. with_peek: also time head 0 + a root-only step
    (what a two-phase scheduler pays when it peeks and then drafts nothing).
    budget_s: fewer rounds (at least 3) when the warm-up round says `repeats`
    would take longer; progress(done, total) after each round."""
    model = decoder.model
    widest = max(t.n_nodes for t in trees)
    cache = model.new_cache(1, context + widest + 1)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=generator).to(model.device)
    root_only = tree_from_paths("root-only", [])
    saved = decoder.tree
    samples: list[list[float]] = [[] for _ in range(len(trees) + 1)]
    with torch.inference_mode():
        logits, _, head_input = decoder.prefill(cache, prompt)
        root = logits.argmax()

        def step(tree: Tree, peek: bool) -> float:
            decoder.set_tree(tree)

            def run() -> None:
                if peek:
                    float(decoder.peek(root, head_input)[1][0, 0])
                tokens, _ = decoder.propose(root, head_input)
                step_logits, step_hidden = decoder.verify(cache, context, tokens)
                _, argmax = ops.token_entropy(step_logits)[:2]
                outcome = decoder.accept(tokens, step_logits, argmax, None)
                # What the next step's heads need (Hydra++: the prefix layer on the accepted rows).
                decoder.advance_heads(step_hidden, outcome.slots, context)
            return seconds_per_call(run, model.device)

        contenders = {index: (lambda tree=tree: step(tree, False)) for index, tree in enumerate(trees)}
        if with_peek:
            contenders[len(trees)] = lambda: step(root_only, True)
        started = time.perf_counter()
        interleaved(contenders, 0)   # the warm-up round, which also says what one round costs
        if budget_s is not None:
            one_round = max(time.perf_counter() - started, 1e-6)
            repeats = max(3, min(repeats, int((budget_s - one_round) / one_round)))
        for done in range(repeats):
            if progress is not None:
                progress(done, repeats)
            for index, values in interleaved(contenders, 1, warmup=0).items():
                samples[index].extend(values)
        if progress is not None:
            progress(repeats, repeats)
    decoder.set_tree(saved)
    times = [1000.0 * statistics.median(s) for s in samples[:-1]]
    return times, (1000.0 * statistics.median(samples[-1]) if with_peek else None)


def cost_curve_for(decoder, probability: dict, n_heads: int, max_nodes: int, repeats: int,
                   log: Callable[[str], None] = print, budget_s: Optional[float] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Time the greedy-grown trees of every depth at COST_SIZES nodes (0 = root-only)
    and a peek; the points of the cost curve."""
    cost_trees: dict[tuple[int, ...], Tree] = {(): tree_from_paths("root-only", [])}
    for depth in range(1, n_heads + 1):
        grown = grow_trees(probability, depth, max_nodes)
        for size in COST_SIZES:
            if 1 <= size <= len(grown):
                paths = grown[size - 1]
                key = tuple(sorted(paths, key=lambda p: (len(p), p)))
                cost_trees.setdefault(key, tree_from_paths(f"d{depth}n{size}", paths))
    trees = list(cost_trees.values())
    log(f"timing {len(trees)} trees and a peek ({repeats} interleaved rounds)")
    ms, peek = measure_step_ms(decoder, trees, repeats=repeats, with_peek=True, budget_s=budget_s,
                               progress=progress)
    curve = [{"nodes": t.n_nodes - 1, "depth": t.max_depth, "ms": round(m, 3)} for t, m in zip(trees, ms)]
    curve.append({"nodes": 0, "depth": 0, "peek": True, "ms": round(peek, 3)})
    return curve
