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
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from entmtp import machine, tasks
from entmtp.decode.speculative import DEFAULT_TOP_K, SpeculativeDecoder
from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.shipped import calibration_heads, heads_fingerprint, load_model_heads
from entmtp.jsonfile import write_json
from entmtp.model.loader import LoadedModel, load_model, model_fingerprint, parse_dtype, resolve_device
from entmtp.schedule.signals import DEFAULT_WINDOW
from entmtp.trees.growth import node_acceptance, superset_tree
from entmtp.trees.tree import tree_from_paths
from entmtp.tune.probe import fit_probe
from entmtp.tune.timing import cost_curve_for

CALIBRATION_FORMAT = "entmtp-calibration/1"


# --------------------------------------------------------------------------- #
# Trees from statistics
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #


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


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 5)


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #


def run_calibration(loaded: LoadedModel, heads_kind: str, task: str, *, heads_path: Optional[str] = None,
                    limit: Optional[int] = None, max_new_tokens: int = 96, superset_nodes: int = 64,
                    window: float = DEFAULT_WINDOW, max_cost_nodes: int = 128, repeats: int = 7,
                    dtype_name: str = "bf16", log: Callable[[str], None] = print) -> dict:
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
    top_k = DEFAULT_TOP_K
    superset = superset_tree(heads.n_heads, top_k, superset_nodes)
    decoder = SpeculativeDecoder(loaded.model, heads, superset, top_k=top_k,
                                 signal_window=window)
    prompts = [loaded.tokenizer.encode_chat(r.prompt) for r in records]
    log(f"calibrating {heads_kind} on {len(prompts)} {task} calibration prompts "
        f"(superset tree of {superset.n_nodes - 1} nodes, {max_new_tokens} new tokens)")
    started = time.perf_counter()
    hidden_states: list[torch.Tensor] = []  # each step's heads input [H], for the probe
    decoder.on_step_hidden = lambda h: hidden_states.append(h.detach().float().cpu())
    results = rollout(decoder, prompts, max_new_tokens, loaded.eos_token_ids,
                      lambda n: log(f"  prompt {n}/{len(prompts)}") if n % 10 == 0 else None)
    columns = step_rows(results)
    decode_seconds = time.perf_counter() - started
    decoder.on_step_hidden = None
    probe = fit_probe(torch.stack(hidden_states), columns["accepted"], columns["prompt"])
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
            "machine": machine.cpu_model(), "cpu_class": machine.cpu_class(), "threads": torch.get_num_threads(),
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
    write_json(path, document, separators=(",", ":"))


def self_rollout_with(calibration: dict, n_prompts: int, model: Optional[str] = None,
                      heads_path: Optional[str] = None, log: Callable[[str], None] = print):
    """A function that sets each candidate tree's `accept_self_rollout`: the mean
    accepted length per step when the calibration's first `n_prompts` prompts are
    decoded with that tree's own buffers (the superset's numbers are biased up:
    nodes the tree lacks steer the trajectory)."""
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


