"""This machine's cost curve, measured once per machine and cached.

A bank source (entmtp.tune.source) carries no step cost: the bank a decoder runs
is derived on the cost curve of the machine it runs on. The curve (ms of one
decode step per tree size and depth, entmtp.tune.timing) is measured the first
time a bank is used on a machine fingerprint (entmtp.machine: CPU model and
kernel path or GPU name, threads, torch version, device), for one model, heads,
dtype and draft vocabulary, in under a minute, and kept in

    $ENTMTP_HOME/cost-curves/<machine fingerprint>.json   {key: curve document}

so every later process on this machine reuses it. `entmtp cost measure` re-measures
on demand; `--cost-curve FILE` (or $ENTMTP_COST_CURVE) uses a given curve
document (`entmtp-cost-curve/1`) instead, with a warning when it was measured on
another machine or setup. A torn or corrupt cache is measured again, never fatal.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from entmtp import machine
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import EntmtpError
from entmtp.heads.shipped import heads_fingerprint
from entmtp.jsonfile import read_json, write_json
from entmtp.model.loader import LoadedModel, model_fingerprint
from entmtp.model.registry import cache_root
from entmtp.schedule.cost import check_points
from entmtp.trees.growth import node_acceptance
from entmtp.trees.tree import tree_from_paths
from entmtp.tune.timing import cost_curve_for

COST_FORMAT = "entmtp-cost-curve/1"
CACHE_FORMAT = "entmtp-cost-cache/1"
ENV_FILE = "ENTMTP_COST_CURVE"
# The timed rounds get this long; with the warm-up round and the prefill the whole
# measurement stays under about a minute on the machines we know. 21 rounds, not 9: on a
# 2-core Zen4 (avx512bf16) 9 rounds took 10 s and left medians out of order by up to 7%
# (2 nodes 8.1 ms, 3 nodes 7.6), which is the size of the choices the bank makes on them.
MEASURE_BUDGET_S = 40.0
MEASURE_REPEATS = 21


def cost_key(loaded: LoadedModel, heads, draft_vocab_size: Optional[int]) -> dict:
    """What a cost curve holds for besides the machine: model, heads, dtype, draft vocabulary."""
    return {"model": model_fingerprint(loaded), "heads": {"kind": heads.kind, "fingerprint": heads_fingerprint(heads)},
            "dtype": loaded.precision.name,
            "draft_vocab": draft_vocab_size}


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def cache_file(device: torch.device | str = "cpu") -> Path:
    return cache_root() / "cost-curves" / f"{machine.fingerprint(device)}.json"


# --------------------------------------------------------------------------- #
# Curve documents
# --------------------------------------------------------------------------- #


def check_cost_document(document: Any, where: str) -> dict:
    """A curve document's structure, or one EntmtpError naming what is wrong."""
    if not isinstance(document, dict) or document.get("format") != COST_FORMAT:
        raise EntmtpError(f"{where} is not an {COST_FORMAT} cost-curve file")
    for name, kind in (("facts", dict), ("key", dict), ("date", str), ("curve", list)):
        if not isinstance(document.get(name), kind):
            raise EntmtpError(f"{where}: {name!r} is missing or has the wrong type")
    check_points(document["curve"], where)
    if not any(p["nodes"] == 0 and not p.get("peek") for p in document["curve"]):
        raise EntmtpError(f"{where}: the curve has no root-only point (nodes 0)")
    return document


def read_cost_file(path: str | os.PathLike, via: str = "") -> dict:
    """A curve document from a file; `via` names where the path came from ("$ENTMTP_COST_CURVE")."""
    where = f"cost-curve file {str(path)!r}" + (f" (from {via})" if via else "")
    return check_cost_document(read_json(Path(path), where), where)


def differences(document: dict, key: Optional[dict], device: torch.device | str = "cpu") -> list[str]:
    """How a curve's machine and setup differ from this one's ("cpu_class avx2 there, amx here");
    key None: the machine only."""
    here = machine.facts(device)
    there = document.get("facts", {})
    # Only what the file records is compared: a hand-made curve may say nothing of its setup.
    found = [f"{name} {there.get(name)} there, {here.get(name)} here" for name in sorted(there)
             if there.get(name) != here.get(name)]
    other = document.get("key", {})
    for name in ("model", "heads", "dtype", "draft_vocab"):
        if key is not None and name in other and other.get(name) != key.get(name):
            found.append(f"{name} {_shown(other.get(name))} there, {_shown(key.get(name))} here")
    return found


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("kind") or value)
    return str(value)


# --------------------------------------------------------------------------- #
# The cache
# --------------------------------------------------------------------------- #


def _read_cache(path: Path, log: Callable[[str], None]) -> dict:
    if not path.exists():
        return {}
    try:
        stored = read_json(path, f"cost-curve cache {str(path)!r}")
        if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or not isinstance(
                stored.get("curves"), dict):
            raise EntmtpError(f"cost-curve cache {str(path)!r} is not an {CACHE_FORMAT} file")
        curves = {}
        for text, document in stored["curves"].items():
            curves[text] = check_cost_document(document, f"cost-curve cache {str(path)!r}")
        return curves
    except EntmtpError as error:
        log(f"entmtp: warning: {error}; measuring again")
        return {}


def cached_curve(key: dict, device: torch.device | str = "cpu",
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Optional[dict]:
    return _read_cache(cache_file(device), log).get(_key_text(key))


def store_curve(document: dict, device: torch.device | str = "cpu",
                log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Optional[Path]:
    """Keep `document` in this machine's cache; None when the cache cannot be written
    (only a re-measurement next time)."""
    path = cache_file(device)
    curves = _read_cache(path, lambda _: None)
    curves[_key_text(document["key"])] = document
    try:
        write_json(path, {"format": CACHE_FORMAT, "curves": curves}, indent=1)
    except (OSError, EntmtpError) as error:
        log(f"entmtp: warning: could not cache the cost curve in {path} ({error}); it is measured again next time")
        return None
    return path


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #


def measure_curve(loaded: LoadedModel, heads, source: dict, *, top_k: int, draft_vocab=None,
                  repeats: int = MEASURE_REPEATS, budget_s: Optional[float] = None, max_nodes: int = 128,
                  progress: bool = True, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Time one decode step of the greedy-grown trees of every depth (the sizes of
    entmtp.tune.timing.COST_SIZES, grown from the source's acceptance) on this
    machine: a curve document."""
    superset = [tuple(p) for p in source["superset"]]
    probability = node_acceptance(source["steps"]["accepted_ranks"], superset)
    decoder = SpeculativeDecoder(loaded.model, heads, tree_from_paths("root-only", []), top_k=top_k,
                                 draft_vocab=draft_vocab)
    started = time.perf_counter()
    bar = _ProgressBar("measuring the step cost") if progress else None
    try:
        curve = cost_curve_for(decoder, probability, heads.n_heads, min(max_nodes, len(superset)), repeats,
                               log=lambda _: None, budget_s=MEASURE_BUDGET_S if budget_s is None else budget_s,
                               progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    key = cost_key(loaded, heads, None if draft_vocab is None else len(draft_vocab.ids))
    return {"format": COST_FORMAT, "facts": machine.facts(loaded.model.device), "fingerprint":
            machine.fingerprint(loaded.model.device), "key": key,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1), "measured_for": source["name"], "curve": curve}


class _ProgressBar:
    """A rich progress bar on stderr over the timed rounds (nothing when stderr is not a terminal)."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=True, disable=not console.is_terminal)
        self.task = None
        self.progress.start()

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("rounds", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        self.progress.stop()


def curve_for_bank(loaded: LoadedModel, heads, source: dict, *, top_k: int, draft_vocab=None,
                   cost_file: Optional[str] = None, use_env: bool = True,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[list, dict]:
    """(cost curve, what it is) for deriving `source`'s bank here: the given file
    (or $ENTMTP_COST_CURVE, unless use_env is False), else this machine's cached
    curve, else measured now (one notice line and a progress bar) and cached."""
    device = loaded.model.device
    key = cost_key(loaded, heads, None if draft_vocab is None else len(draft_vocab.ids))
    via = "" if cost_file else f"${ENV_FILE}"
    cost_file = cost_file or (os.environ.get(ENV_FILE) if use_env else None) or None
    if cost_file:
        document = read_cost_file(cost_file, via)
        found = differences(document, key, device)
        if found:
            log(f"entmtp: warning: cost curve {cost_file} was measured on another machine or setup "
                f"({'; '.join(found)}); using it anyway")
        return document["curve"], describe_curve(document, f"file {cost_file}")
    document = cached_curve(key, device, log)
    if document is not None:
        return document["curve"], describe_curve(document, "cache")
    log(f"entmtp: measuring this machine's step cost for {heads.kind} heads in {key['dtype']} (once per machine and "
        f"setup, under a minute; cached in {cache_file(device)})")
    document = measure_curve(loaded, heads, source, top_k=top_k, draft_vocab=draft_vocab, log=log)
    store_curve(document, device, log)
    return document["curve"], describe_curve(document, "measured now")


def describe_curve(document: dict, origin: str) -> dict:
    facts = document.get("facts", {})
    return {"origin": origin, "date": document.get("date"), "fingerprint": document.get("fingerprint"),
            "machine": facts.get("gpu") or facts.get("cpu"), "cpu_class": facts.get("cpu_class"),
            "threads": facts.get("threads"), "dtype": document.get("key", {}).get("dtype"),
            "seconds": document.get("seconds")}


def described_curves(device: torch.device | str = "cpu") -> list[dict]:
    """The curves cached for this machine, for `entmtp cost list`."""
    return list(_read_cache(cache_file(device), lambda m: print(m, file=sys.stderr)).values())


def points_summary(curve: Sequence[dict], limit: int = 10) -> str:
    """'n0 23.1, n1d1 27.8, ...' ms: a curve in one line."""
    shown = [p for p in curve if not p.get("peek")][:limit]
    return ", ".join(f"n{p['nodes']}" + (f"d{p['depth']}" if p["nodes"] else "") + f" {p['ms']:.1f}" for p in shown)
