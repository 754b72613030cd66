"""`entmtp calibrate`: acceptance statistics of a task's calibration split.

1. Decode the task's calibration prompts (never its evaluation prompts) with a
   large superset tree. Every step records the signals a policy would have seen
   before it (entropy EMA, accept EMA, head confidence) and the accepted path as
   a tuple of ranks. Under greedy verification a node of any smaller tree is
   accepted exactly when its rank path is a prefix of that path, so one rollout
   scores every subtree of the superset (biased: the trajectory is the
   superset's; `entmtp trees build` de-biases its frontier by self-rollout).
Nothing here is timed: what a step costs belongs to the machine a bank runs on
(entmtp.tune.machine_cost measures it there).

The calibration file (JSON, `entmtp-calibration/1`) keeps it all with its
provenance: model, heads fingerprint, task, prompt ids, dtype, device, date.

Decoding is the long part and is resumable: each decoded prompt is kept in
`<out>.partial/` as it finishes (one file each, written atomically), and a rerun
with the same options decodes only the prompts not kept yet. A rerun with other
options is refused (naming them) rather than deleting those prompts.
"""
from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from entmtp import machine, tasks
from entmtp.decode.speculative import DEFAULT_TOP_K, SpeculativeDecoder
from entmtp.defaults import HEAD_KINDS
from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.shipped import calibration_heads, heads_fingerprint, load_model_heads
from entmtp.jsonfile import read_json, write_json
from entmtp.model.loader import LoadedModel, load_model, model_fingerprint, parse_dtype, resolve_device
from entmtp.outputs import write_atomically
from entmtp.schedule.signals import DEFAULT_WINDOW
from entmtp.trees.files import list_trees, load_tree
from entmtp.trees.growth import superset_tree
from entmtp.trees.tree import Tree, tree_from_paths
from entmtp.tune.probe import fit_probe

CALIBRATION_FORMAT = "entmtp-calibration/1"


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


def calibration_superset(n_heads: int, top_k: int, n_nodes: int) -> Tree:
    """The tree a calibration decodes with: the `n_nodes` paths of highest prior
    (entmtp.trees.growth.superset_tree) joined with every shipped tree the heads can
    draft (depth <= n_heads, ranks < top_k), so the tables score those trees exactly
    (mc_sim_7b_63 adds 18 nodes to the 64 of the prior). A union of prefix-closed
    path sets is prefix-closed."""
    base = superset_tree(n_heads, top_k, n_nodes)
    paths = set(base.paths)
    for name in list_trees():
        tree = load_tree(name)
        if tree.max_depth <= n_heads and tree.top_k_needed <= top_k:
            paths.update(tree.paths)
    ordered = sorted(paths, key=lambda p: (len(p), p))
    return tree_from_paths(f"superset{len(ordered)}", ordered,
                           {"built_by": f"{base.name} joined with the shipped trees"})


def check_options(task: str, heads_kind: str, *, limit: int | None = None, max_new_tokens: int = 96,
                  superset_nodes: int = 64, window: float = DEFAULT_WINDOW) -> None:
    """Every option of a calibration, before anything loads."""
    if task not in tasks.TASKS:
        raise UsageError(f"unknown task {task!r}; available: {', '.join(tasks.TASKS)}")
    if heads_kind not in HEAD_KINDS:
        raise UsageError(f"--head-kind must be one of {', '.join(HEAD_KINDS)}, not {heads_kind!r}")
    for option, value, least in (("--limit", limit, 1), ("--max-new-tokens", max_new_tokens, 1),
                                 ("--superset-nodes", superset_nodes, 2)):
        if value is not None and value < least:
            raise UsageError(f"{option} must be >= {least}, got {value}")
    if not math.isfinite(window) or window < 1:
        raise UsageError(f"--window must be a finite number >= 1, got {window}")


def calibration_records(task: str, limit: int | None = None) -> list:
    """The task's calibration prompts (its recorded split), the first `limit` of them."""
    records = tasks.select(task, tasks.load_task(task, None, tasks.Skipped()), "calibration", False)
    records = records[:limit] if limit else records
    if not records:
        raise EntmtpError(f"task {task!r} has no calibration prompts")
    return records


def partial_folder(out: Path) -> Path:
    """Where an unfinished calibration to `out` keeps its decoded prompts."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def kept_prompts(partial: Path, n_prompts: int) -> int:
    """How many of the first `n_prompts` prompts are decoded and kept in `partial`."""
    return sum((Path(partial) / _prompt_file(i)).is_file() for i in range(n_prompts))


def discard_partial(partial: Path) -> None:
    """Remove a partial folder's own files (and the folder, once empty)."""
    partial = Path(partial)
    for path in [*partial.glob("prompt-*.pt"), partial / _KEY_FILE]:
        path.unlink(missing_ok=True)
    try:
        partial.rmdir()
    except OSError:
        pass  # missing, or it holds something that is not ours: left alone


_KEY_FILE = "key.json"
PARTIAL_FORMAT = "entmtp-calibration-partial/2"   # /2: the superset joins the shipped trees


def _prompt_file(index: int) -> str:
    return f"prompt-{index:05d}.pt"


# The partial key's entries, as the option that sets each (None: not an option).
_KEY_OPTIONS = {"format": None, "model": "--model", "heads": "--heads/--head-kind", "task": "--task",
                "max_new_tokens": "--max-new-tokens", "superset_nodes": "--superset-nodes", "window": "--window",
                "top_k": None, "dtype": "--dtype", "device": "--device"}


def _earlier_key(folder: Path) -> dict | None:
    """The key of the decoded prompts kept in `folder`, or None when it keeps none."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        earlier = read_json(folder / _KEY_FILE)
    except EntmtpError:
        earlier = None
    if not isinstance(earlier, dict):
        raise EntmtpError(f"{folder} is not an unfinished calibration (no readable {_KEY_FILE}); "
                          "remove it or choose another --out")
    return earlier if any(folder.glob("prompt-*.pt")) else None


def _shown(name: str, value) -> str:
    if name == "model" and isinstance(value, dict):
        return str(value.get("name", value))
    return "(none)" if value is None else str(value)


def check_partial(folder: Path | None, key: dict) -> None:
    """Refuse to resume into `folder` when its decoded prompts were made under another
    key: one UsageError naming each differing option with both values (rerunning with
    other options must not silently delete minutes of decoding). Only the entries of
    `key` are compared, so the CLI can check the options it knows before the model loads."""
    if folder is None:
        return
    folder = Path(folder)
    earlier = _earlier_key(folder)
    if earlier is None:
        return
    differing = [name for name in key if earlier.get(name) != key[name]]
    if not differing:
        return
    n_kept = sum(1 for _ in folder.glob("prompt-*.pt"))
    options = [name for name in differing if _KEY_OPTIONS.get(name)]
    if not options:  # only what no option sets: another entmtp version's folder
        raise UsageError(f"{folder} holds {n_kept} prompts decoded by another version of entmtp "
                         f"({', '.join(f'{n} {_shown(n, earlier.get(n))}' for n in differing)}); delete {folder} "
                         "to start over")
    shown = "; ".join(f"{_KEY_OPTIONS[n]} {_shown(n, earlier.get(n))} there, {_shown(n, key[n])} now"
                      for n in options)
    raise UsageError(f"{folder} holds {n_kept} prompts decoded with other options ({shown}); rerun with the "
                     f"options it was made with to resume, or delete {folder} to start over")


def partial_key(*, task: str, max_new_tokens: int, superset_nodes: int, window: float, dtype_name: str,
                **rest) -> dict:
    """The partial key's entries known from the options alone (before the model loads);
    `rest`: the others (model, heads, device), once known."""
    return {"format": PARTIAL_FORMAT, **rest, "task": task, "max_new_tokens": max_new_tokens,
            "superset_nodes": superset_nodes, "window": window, "top_k": DEFAULT_TOP_K, "dtype": dtype_name}


class _Partial:
    """Decoded prompts of an unfinished calibration, under a key of everything that
    changes a prompt's steps (--limit is not part of it: prompt i is the same prompt)."""

    def __init__(self, folder: Path | None, key: dict, log: Callable[[str], None]):
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            return
        check_partial(self.folder, key)
        write_json(self.folder / _KEY_FILE, key, indent=1)

    def load(self, index: int, prompt_id: str) -> dict | None:
        path = None if self.folder is None else self.folder / _prompt_file(index)
        if path is None or not path.is_file():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - any damage (unlikely: files are renamed into place): decode it again
            return None
        return saved if isinstance(saved, dict) and saved.get("id") == prompt_id else None

    def save(self, index: int, saved: dict) -> None:
        if self.folder is None:
            return
        # Ctrl-C mid-save leaves no half a prompt.
        write_atomically(self.folder / _prompt_file(index), lambda tmp: torch.save(saved, tmp))


def run_calibration(loaded: LoadedModel, heads_kind: str, task: str, *, heads_path: Optional[str] = None,
                    limit: Optional[int] = None, max_new_tokens: int = 96, superset_nodes: int = 64,
                    window: float = DEFAULT_WINDOW, dtype_name: str = "bf16", partial: Path | None = None,
                    records: list | None = None, log: Callable[[str], None] = print) -> dict:
    """The calibration document. With `partial` (a folder), each decoded prompt is
    kept there as it finishes, and prompts already kept under the same options are
    not decoded again (the caller removes the folder once the document is written).
    `records`: calibration_records(task, limit) when the caller has them already."""
    check_options(task, heads_kind, limit=limit, max_new_tokens=max_new_tokens, superset_nodes=superset_nodes,
                  window=window)
    records = records if records is not None else calibration_records(task, limit)
    heads = load_model_heads(loaded, heads_kind, heads_path)
    top_k = DEFAULT_TOP_K
    superset = calibration_superset(heads.n_heads, top_k, superset_nodes)
    decoder = SpeculativeDecoder(loaded.model, heads, superset, top_k=top_k,
                                 signal_window=window)
    prompts = [loaded.tokenizer.encode_chat(r.prompt) for r in records]
    key = partial_key(model=model_fingerprint(loaded), heads=heads_fingerprint(heads), task=task,
                      max_new_tokens=max_new_tokens, superset_nodes=superset_nodes, window=window,
                      dtype_name=dtype_name, device=str(loaded.model.device))
    store = _Partial(partial, key, log)
    log(f"calibrating {heads_kind} on {len(prompts)} {task} calibration prompts "
        f"(superset tree of {superset.n_nodes - 1} nodes, {max_new_tokens} new tokens)")
    captured: list[torch.Tensor] = []  # each step's heads input [H], for the probe
    decoder.on_step_hidden = lambda h: captured.append(h.detach().float().cpu())
    done, resumed = [], 0
    for index, (record, ids) in enumerate(zip(records, prompts)):
        saved = store.load(index, record.id)
        if saved is None:
            captured.clear()
            started = time.perf_counter()
            result = decoder.generate(ids, max_new_tokens, loaded.eos_token_ids)
            hidden = torch.stack(captured) if captured else torch.zeros(0, loaded.config.hidden_size)
            saved = {"id": record.id, "columns": step_rows([result]), "hidden": hidden,
                     "seconds": time.perf_counter() - started}
            store.save(index, saved)
        else:
            resumed += 1
        done.append(saved)
        if (index + 1) % 10 == 0:
            log(f"  prompt {index + 1}/{len(prompts)}")
    decoder.on_step_hidden = None
    if resumed:
        log(f"  {resumed} of {len(prompts)} prompts were decoded by an earlier run (kept in {partial})")
    columns = {k: [] for k in done[0]["columns"]}
    for index, saved in enumerate(done):
        for name, values in saved["columns"].items():
            columns[name].extend([index] * len(values) if name == "prompt" else values)
    decode_seconds = sum(saved["seconds"] for saved in done)
    probe = fit_probe(torch.cat([saved["hidden"] for saved in done]), columns["accepted"], columns["prompt"])
    columns["probe"] = probe.pop("oof")
    log(f"probe: ridge lambda {probe['lambda']:g}, out-of-fold r {probe['out_of_fold_r']:.3f} "
        "with accepted length")
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
    }


def write_calibration(document: dict, path: Path) -> None:
    write_json(path, document, separators=(",", ":"))


def self_rollout_with(calibration: dict, n_prompts: int, model: Optional[str] = None,
                      heads_path: Optional[str] = None, log: Callable[[str], None] = print,
                      max_new_tokens: Optional[int] = None):
    """A function that sets each candidate tree's `accept_self_rollout`: the mean
    accepted length per step when the calibration's first `n_prompts` prompts are
    decoded with that tree's own buffers (the superset's numbers are biased: its
    trajectory is not the tree's). max_new_tokens: per prompt (default: the
    calibration's)."""
    provenance = calibration["provenance"]
    loaded = load_model(model, parse_dtype(provenance["dtype"]), resolve_device(provenance["device"]))
    heads = calibration_heads(loaded, provenance, heads_path)
    task = provenance["task"]
    by_id = {r.id: r for r in tasks.load_task(task, None, tasks.Skipped())}
    ids = [i for i in provenance["prompt_ids"] if i in by_id][:n_prompts]
    prompts = [loaded.tokenizer.encode_chat(by_id[i].prompt) for i in ids]
    max_new_tokens = max_new_tokens or provenance["max_new_tokens"]
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
