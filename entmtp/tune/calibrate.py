"""`entmtp calibrate`: acceptance statistics and this machine's step cost, per task.

1. Decode the task's calibration prompts (never its evaluation prompts) with a
   large superset tree. Every step records the signals a policy would have seen
   before it (entropy EMA, accept EMA, head confidence) and the accepted path as
   a tuple of ranks. Under greedy verification a node of any smaller tree is
   accepted exactly when its rank path is a prefix of that path, so one rollout
   scores every subtree of the superset (biased: the trajectory is the
   superset's; `entmtp trees build` de-biases its frontier by self-rollout).
2. Grow candidate trees from those statistics and time one decode step of each
   (propose + verify + accept) at a fixed context: the cost curve, ms per step as
   a function of tree size and depth, on this device and dtype.

The calibration file (JSON, `entmtp-calibration/1`) keeps it all with its
provenance: model, heads fingerprint, task, prompt ids, dtype, device, date.
"""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from entmtp import ops
from entmtp.errors import EntmtpError, UsageError
from entmtp.model.loader import LoadedModel
from entmtp.schedule.policies import DEFAULT_WINDOW
from entmtp.trees.tree import Tree, tree_from_paths

CALIBRATION_FORMAT = "entmtp-calibration/1"
COST_SIZES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
SUPERSET_DEPTH_DECAY = 0.7


# --------------------------------------------------------------------------- #
# Trees from statistics
# --------------------------------------------------------------------------- #

def superset_tree(n_heads: int, top_k: int, n_nodes: int) -> Tree:
    """The n_nodes paths with the highest prior prod_i 1/(rank_i + 1) * decay^depth.

    The prior falls along every path, so the top-n set is prefix-closed (ties
    broken by (depth, path), parents first)."""
    paths: list[tuple[int, ...]] = []
    frontier = [(r,) for r in range(top_k)]
    while frontier:
        paths.extend(frontier)
        frontier = [p + (r,) for p in frontier if len(p) < n_heads for r in range(top_k)
                    if _prior(p + (r,)) >= 1e-4]

    ranked = sorted(paths, key=lambda p: (-_prior(p), len(p), p))[:n_nodes]
    return tree_from_paths(f"superset{len(ranked)}", ranked,
                           {"built_by": f"top {n_nodes} paths by prior prod 1/(rank+1) * "
                                        f"{SUPERSET_DEPTH_DECAY}^depth"})


def _prior(path: tuple[int, ...]) -> float:
    value = SUPERSET_DEPTH_DECAY ** len(path)
    for rank in path:
        value /= rank + 1
    return value


def node_acceptance(accepted_paths: Sequence[Sequence[int]], nodes: Sequence[tuple[int, ...]]) -> dict:
    """Per node (rank path): the fraction of steps whose accepted path passes through it."""
    counts = dict.fromkeys(nodes, 0)
    for accepted in accepted_paths:
        accepted = tuple(accepted)
        for cut in range(1, len(accepted) + 1):
            prefix = accepted[:cut]
            if prefix in counts:
                counts[prefix] += 1
    total = max(len(accepted_paths), 1)
    return {node: count / total for node, count in counts.items()}


def grow_trees(probability: dict, max_depth: int, max_nodes: int) -> list[tuple[tuple[int, ...], ...]]:
    """Greedy node-by-node growth: add the frontier node (child of the tree, depth
    <= max_depth, known to the statistics) with the highest acceptance
    probability; returns the path tuple after each addition (sizes 1..)."""
    tree: list[tuple[int, ...]] = []
    inside: set[tuple[int, ...]] = set()
    grown = []
    while len(tree) < max_nodes:
        frontier = [p for p in probability if p not in inside and len(p) <= max_depth
                    and (len(p) == 1 or p[:-1] in inside)]
        if not frontier:
            break
        best = max(frontier, key=lambda p: (probability[p], -sum(p), -len(p)))
        tree.append(best)
        inside.add(best)
        grown.append(tuple(tree))
    return grown


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #

def heads_fingerprint(heads) -> str:
    """A short checksum of the heads' weights: a bank is only valid for these heads."""
    total, absolute = 0.0, 0.0
    for tensor in heads.state_dict().values():
        if tensor is None or not torch.is_floating_point(tensor):
            continue
        t = tensor.detach().double()
        total += float(t.sum())
        absolute += float(t.abs().sum())
    return f"{heads.kind}-{heads.n_heads}x{heads.n_layers}-{total:.6e}-{absolute:.6e}"


def model_fingerprint(loaded: LoadedModel) -> dict:
    cfg = loaded.config
    return {"name": loaded.folder.name, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers}


def measure_step_ms(decoder, trees: Sequence[Tree], context: int = 256, repeats: int = 7,
                    with_peek: bool = False) -> tuple[list[float], Optional[float]]:
    """Median ms of one decode step (propose + verify + accept) per tree, at a
    `context`-token prefix of random ids. Trees are timed round-robin, one step
    each per round after a warm-up round, so a slow spell of a shared machine
    falls on every tree alike. with_peek: also time head 0 + a root-only step
    (what a two-phase scheduler pays when it peeks and then drafts nothing)."""
    model = decoder.model
    widest = max(t.n_nodes for t in trees)
    cache = model.new_cache(1, context + widest + 1)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=generator).to(model.device)
    root_only = tree_from_paths("root-only", [])
    saved = decoder.tree
    samples: list[list[float]] = [[] for _ in range(len(trees) + 1)]
    with torch.inference_mode():
        logits, hidden_last = decoder.prefill(cache, prompt)
        root = logits.argmax()

        def step(tree: Tree, peek: bool) -> float:
            decoder.set_tree(tree)
            _sync(model.device)
            start = time.perf_counter()
            if peek:
                float(decoder.peek(root, hidden_last)[1][0, 0])
            tokens = decoder.propose(root, hidden_last)
            step_logits, _ = decoder.verify(cache, context, tokens)
            _, argmax = ops.token_entropy(step_logits)[:2]
            decoder.accept(tokens, step_logits, argmax, None)
            _sync(model.device)
            return time.perf_counter() - start

        for round_index in range(repeats + 1):
            for index, tree in enumerate(trees):
                elapsed = step(tree, False)
                if round_index:
                    samples[index].append(elapsed)
            if with_peek:
                elapsed = step(root_only, True)
                if round_index:
                    samples[-1].append(elapsed)
    decoder.set_tree(saved)
    times = [1000.0 * statistics.median(s) for s in samples[:-1]]
    return times, (1000.0 * statistics.median(samples[-1]) if with_peek else None)


def cost_curve_for(decoder, probability: dict, n_heads: int, max_nodes: int, repeats: int,
                   log: Callable[[str], None] = print) -> list[dict]:
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
    ms, peek = measure_step_ms(decoder, trees, repeats=repeats, with_peek=True)
    curve = [{"nodes": t.n_nodes - 1, "depth": t.max_depth, "ms": round(m, 3)} for t, m in zip(trees, ms)]
    curve.append({"nodes": 0, "depth": 0, "peek": True, "ms": round(peek, 3)})
    return curve


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rollout(decoder, prompts: Sequence[list[int]], max_new_tokens: int, eos: tuple[int, ...],
            progress: Optional[Callable[[int], None]] = None) -> list:
    """Decode each prompt; returns the GenerationResults (records carry the signals)."""
    results = []
    for index, ids in enumerate(prompts):
        results.append(decoder.generate(ids, max_new_tokens, eos))
        if progress is not None:
            progress(index + 1)
    return results


def step_rows(results) -> dict:
    """Per-step columns of a list of results: the signals before each step, the
    accepted rank path, the root entropy and the step's own head confidence."""
    columns = {"prompt": [], "entropy_ema": [], "accept_ema": [], "confidence_prev": [],
               "confidence": [], "root_entropy": [], "accepted": [], "accepted_ranks": []}
    for index, result in enumerate(results):
        for record in result.records:
            entropy_ema, accept_ema, confidence_prev = (record.signals or (None, None, None))[:3]
            columns["prompt"].append(index)
            columns["entropy_ema"].append(_round(entropy_ema))
            columns["accept_ema"].append(_round(accept_ema))
            columns["confidence_prev"].append(_round(confidence_prev))
            columns["confidence"].append(_round(record.confidence))
            columns["root_entropy"].append(_round(record.root_entropy))
            columns["accepted"].append(record.accepted)
            columns["accepted_ranks"].append(list(record.accepted_ranks or ()))
    return columns


PROBE_LAMBDAS = (30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
PROBE_FOLDS = 4


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge regression with an unpenalised bias: x [N, H] (float64), y [N] -> weights [H + 1]."""
    mean_x, mean_y = x.mean(0), y.mean()
    xc = x - mean_x
    w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - mean_y))
    return torch.cat([w, (mean_y - mean_x @ w).reshape(1)])


def fit_probe(hidden: torch.Tensor, accepted: Sequence[int], prompt_of_step: Sequence[int]) -> dict:
    """The probe signal: ridge regression of accepted length on the step's hidden
    state [N, H]. The penalty is chosen by cross-validation over prompt folds (no
    prompt is in both its fit and its test), and every step also gets an
    out-of-fold prediction, so the tables binned on it are not fit on themselves."""
    x = hidden.double()
    y = torch.tensor(accepted, dtype=torch.float64)
    folds = torch.tensor([p % PROBE_FOLDS for p in prompt_of_step])
    best = None
    for lam in PROBE_LAMBDAS:
        predicted = torch.empty_like(y)
        for fold in range(PROBE_FOLDS):
            test = folds == fold
            if test.all() or not test.any():
                predicted[test] = y.mean()
                continue
            w = _ridge(x[~test], y[~test], lam)
            predicted[test] = x[test] @ w[:-1] + w[-1]
        r = _pearson(predicted, y)
        if best is None or r > best[1]:
            best = (lam, r, predicted)
    lam, r, predicted = best
    weights = _ridge(x, y, lam)
    return {"weights": [round(float(v), 7) for v in weights], "lambda": lam, "out_of_fold_r": round(r, 4),
            "target": "accepted length with the superset tree", "oof": [round(float(v), 5) for v in predicted]}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 5)


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #

def run_calibration(loaded: LoadedModel, heads_kind: str, task: str, *, heads_path: Optional[str] = None,
                    limit: Optional[int] = None, max_new_tokens: int = 96, superset_nodes: int = 64,
                    window: float = DEFAULT_WINDOW, max_cost_nodes: int = 128, repeats: int = 7,
                    dtype_name: str = "bf16", log: Callable[[str], None] = print) -> dict:
    from entmtp import tasks
    from entmtp.decode.methods import load_model_heads
    from entmtp.decode.speculative import SpeculativeDecoder

    if task not in tasks.TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(tasks.TASKS)}")
    if heads_kind not in ("medusa", "hydra"):
        raise UsageError(f"--heads must be medusa or hydra, not {heads_kind!r}")
    if superset_nodes < 2:
        raise UsageError(f"--superset-nodes must be >= 2, got {superset_nodes}")
    records = tasks.select(task, tasks.load_task(task, None, tasks.Skipped()), "calibration",
                                 False)
    records = records[:limit] if limit else records
    if not records:
        raise EntmtpError(f"task {task!r} has no calibration prompts")
    heads = load_model_heads(loaded, heads_kind, heads_path)
    top_k = 10
    superset = superset_tree(heads.n_heads, top_k, superset_nodes)
    decoder = SpeculativeDecoder(loaded.model, heads, superset, top_k=top_k,
                                 signal_window=window)
    prompts = [loaded.tokenizer.encode_chat(r.prompt) for r in records]
    log(f"calibrating {heads_kind} on {len(prompts)} {task} calibration prompts "
        f"(superset tree of {superset.n_nodes - 1} nodes, {max_new_tokens} new tokens)")
    started = time.perf_counter()
    decoder.capture_hidden = []
    results = rollout(decoder, prompts, max_new_tokens, loaded.eos_token_ids,
                      lambda n: log(f"  prompt {n}/{len(prompts)}") if n % 10 == 0 else None)
    columns = step_rows(results)
    decode_seconds = time.perf_counter() - started
    probe = fit_probe(torch.stack(decoder.capture_hidden), columns["accepted"], columns["prompt"])
    decoder.capture_hidden = None
    columns["probe"] = probe.pop("oof")
    log(f"probe: ridge lambda {probe['lambda']:g}, out-of-fold r {probe['out_of_fold_r']:.3f} "
        "with accepted length")
    probability = node_acceptance(columns["accepted_ranks"], superset.paths)

    cost_curve = cost_curve_for(decoder, probability, heads.n_heads, max_cost_nodes, repeats, log)
    return {
        "format": CALIBRATION_FORMAT,
        "provenance": {
            "model": model_fingerprint(loaded),
            "heads": {"kind": heads.kind, "n_heads": heads.n_heads, "top_k": top_k,
                      "fingerprint": heads_fingerprint(heads),
                      "path": str(heads_path) if heads_path else "shipped"},
            "task": task, "split": "calibration", "prompt_ids": [r.id for r in records],
            "max_new_tokens": max_new_tokens, "dtype": dtype_name, "device": str(loaded.model.device),
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "decode_seconds": round(decode_seconds, 1),
        },
        "window": window,
        "superset": [list(p) for p in superset.paths],
        "probe": probe,
        "steps": columns,
        "cost_curve": cost_curve,
    }


def write_calibration(document: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(path)


def self_rollout_with(calibration: dict, n_prompts: int, model: Optional[str] = None,
                      heads_path: Optional[str] = None, log: Callable[[str], None] = print):
    """A function that sets each candidate tree's `accept_self_rollout`: the mean
    accepted length per step when the calibration's first `n_prompts` prompts are
    decoded with that tree's own buffers (the superset's numbers are biased up:
    nodes the tree lacks steer the trajectory)."""
    from entmtp import tasks
    from entmtp.model.loader import load_model, parse_dtype, resolve_device
    from entmtp.decode.speculative import SpeculativeDecoder

    provenance = calibration["provenance"]
    loaded = load_model(model, parse_dtype(provenance["dtype"]), resolve_device(provenance["device"]))
    heads = calibration_heads(loaded, provenance, heads_path)
    task = provenance["task"]
    by_id = {r.id: r for r in tasks.load_task(task, None, tasks.Skipped())}
    ids = [i for i in provenance["prompt_ids"] if i in by_id][:n_prompts]
    prompts = [loaded.tokenizer.encode_chat(by_id[i].prompt) for i in ids]
    max_new_tokens = provenance["max_new_tokens"]
    top_k = provenance["heads"]["top_k"]

    def run(candidates) -> None:
        for candidate in candidates:
            tree = tree_from_paths(candidate.name, candidate.paths)
            decoder = SpeculativeDecoder(loaded.model, heads, tree, top_k=top_k)
            results = rollout(decoder, prompts, max_new_tokens, loaded.eos_token_ids)
            accepted = [r.accepted for result in results for r in result.records]
            candidate.accept_self_rollout = sum(accepted) / max(len(accepted), 1)
            log(f"  self-rollout {candidate.name}: accepted {candidate.accept_self_rollout:.3f} per step "
                f"(biased {candidate.accept_biased:.3f}) on {len(prompts)} prompts")
    return run


def recost_calibration(loaded: LoadedModel, calibration: dict, heads_path: Optional[str] = None,
                       repeats: int = 15, log: Callable[[str], None] = print) -> dict:
    """Re-time a calibration's cost curve on this machine (quietly, with more
    rounds): the acceptance statistics stay, the cost curve and its date change."""
    from entmtp.decode.speculative import SpeculativeDecoder

    provenance = calibration["provenance"]
    heads = calibration_heads(loaded, provenance, heads_path)
    superset = tree_from_paths("superset", [tuple(p) for p in calibration["superset"]])
    decoder = SpeculativeDecoder(loaded.model, heads, superset, top_k=provenance["heads"]["top_k"])
    probability = node_acceptance(calibration["steps"]["accepted_ranks"], superset.paths)
    document = dict(calibration)
    document["cost_curve"] = cost_curve_for(decoder, probability, heads.n_heads, 128, repeats, log)
    document["provenance"] = dict(provenance, cost_date=datetime.datetime.now().isoformat(timespec="seconds"),
                                  cost_repeats=repeats, threads=torch.get_num_threads())
    return document


def calibration_heads(loaded: LoadedModel, provenance: dict, heads_path: Optional[str] = None):
    """The heads a calibration was made with, loaded for `loaded`; refuses another
    model or heads whose weights differ (fingerprint)."""
    from entmtp.decode.methods import load_model_heads

    if loaded.folder.name != provenance["model"]["name"]:
        raise EntmtpError(f"the calibration is for model {provenance['model']['name']!r}, "
                          f"not {loaded.folder.name!r} (pass --model)")
    heads = load_model_heads(loaded, provenance["heads"]["kind"], heads_path)
    if heads_fingerprint(heads) != provenance["heads"]["fingerprint"]:
        raise EntmtpError("the calibration was made with other heads than these (fingerprints differ)")
    return heads
