"""`entmtp bench`: every method and peer on the four tasks, in one run.

Methods interleave prompt by prompt (A B C A B C ...) after a warm-up, so
machine drift lands on all of them alike. Each finished (prompt, method) is
appended to results.jsonl at once; `--resume` skips what is already there.
summary.json / summary.md are rebuilt from results.jsonl at the end, so a
resumed or interrupted run summarises everything measured so far.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from entmtp import machine, tasks
from entmtp.bench.config import BenchConfig
from entmtp.bench.contenders import (
    PeerMissing,
    Run,
    exactness_comparable,
    is_peer,
    make_contender,
    parse_method,
)
from entmtp.bench.summary import live_table, summarize, summary_markdown
from entmtp.errors import EntmtpError, Interrupted, UsageError
from entmtp.jsonfile import read_json, write_json
from entmtp.outputs import check_output_folder, write_atomically

RESULTS = "results.jsonl"


# ---------------------------------------------------------------- results file
def open_results(cfg: BenchConfig, console: Console) -> tuple[Path, list[dict]]:
    """Create --out, check it is writable, and load earlier results for --resume."""
    check_output_folder(cfg.out, "--out")
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EntmtpError(f"cannot write to --out {cfg.out}: {exc.strerror or exc}") from None
    path = cfg.out / RESULTS
    if not path.exists():
        return path, []
    if not cfg.resume:
        raise UsageError(f"{path} already exists; pass --resume to continue it or choose another --out")
    done, torn = _read_results(path)
    settings = cfg.settings()
    for record in done:
        theirs = record.get("settings")
        if theirs != settings:
            theirs = theirs if isinstance(theirs, dict) else {}
            differ = [f"{key} {theirs.get(key)!r} there, {settings.get(key)!r} now"
                      for key in sorted(set(settings) | set(theirs)) if theirs.get(key) != settings.get(key)]
            raise UsageError(f"{path} was made with other settings ({'; '.join(differ)}); "
                             f"use the same flags to --resume, or another --out")
    if torn:
        # Rewrite without the torn line(s), so appends start on a line of their own.
        # Atomically: a Ctrl-C here must not cut the results already kept.
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done)
        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        console.print(f"[yellow]{torn} unreadable line(s) in {path} dropped; those prompts run again[/]")
    return path, done


def _read_results(path: Path) -> tuple[list[dict], int]:
    """results.jsonl -> (its records, the number of unreadable lines)."""
    done, torn = [], 0
    if not path.exists():
        return done, torn
    # errors="replace": a line torn inside a multi-byte character is one more unreadable line.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and all(k in record for k in ("task", "method", "prompt_id")):
            done.append(record)
        else:
            torn += 1  # a line cut by an interrupt: that prompt is simply run again
    return done, torn


def append_result(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------- summary


def machine_facts(device: str) -> dict:
    facts = {**machine.facts(device if torch.cuda.is_available() else "cpu"), "cores": os.cpu_count(),
             "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    return facts


def first_mismatch(tokens: list[int], reference: list[int]) -> int | None:
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


# ------------------------------------------------------------------------- run
def run_bench(cfg: BenchConfig, console: Console | None = None) -> dict:
    from entmtp.model.loader import parse_dtype, resolve_device

    console = console or Console(stderr=True)
    if cfg.plot:
        from entmtp.bench.plots import require_matplotlib
        require_matplotlib()
    if cfg.limit is not None and cfg.limit < 1:
        raise UsageError(f"--limit must be positive, got {cfg.limit}")
    if cfg.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.data is not None and len(cfg.tasks) != 1:
        raise UsageError("--data replaces one task's prompts: pass a single --task with it")
    dtype, device = parse_dtype(cfg.dtype), resolve_device(cfg.device)

    # Load every task's prompts before any model work, so data problems stop us early.
    prompts: dict[str, list[tasks.TaskRecord]] = {}
    for task in cfg.tasks:
        skipped = tasks.Skipped()
        records = tasks.select(task, tasks.load_task(task, cfg.data, skipped), cfg.split,
                               cfg.data is not None)
        if skipped.lines:
            console.print(f"[yellow]{task}: skipped {len(skipped.lines)} malformed record(s) "
                          f"(lines {', '.join(map(str, skipped.lines[:5]))}{' ...' if len(skipped.lines) > 5 else ''})[/]")
        prompts[task] = records[:cfg.limit] if cfg.limit else records
    results_path, records = open_results(cfg, console)
    planned = {(task, r.id) for task, task_prompts in prompts.items() for r in task_prompts}
    try:
        records = _load_and_measure(cfg, console, prompts, records, results_path, dtype, device)
    except KeyboardInterrupt:
        if not console.is_terminal:
            console.line()  # the progress bar's last frame ends without one
        # Every finished (prompt, method) is already on disk, fsynced: only the one in progress is lost.
        kept = sum(1 for r in _read_results(results_path)[0] if (r["task"], r["prompt_id"]) in planned)
        raise Interrupted(f"interrupted: {kept} finished (prompt, method) results are in {results_path}, the "
                          f"one in progress was dropped; rerun the same command with --resume to continue") from None

    summary = summarize(records, cfg, machine_facts(cfg.device))
    if (cfg.out / "banks.json").exists():
        summary["banks"] = {m: b for m, b in read_json(cfg.out / "banks.json").items() if m in cfg.methods}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (cfg.out / "summary.md").write_text(summary_markdown(summary))
    if cfg.plot:
        from entmtp.bench.plots import write_plots
        write_plots(summary, records, cfg.out)
    if cfg.analysis:
        write_analysis(records, summary, cfg, console)
    return summary


def _load_and_measure(cfg: BenchConfig, console: Console, prompts: dict, records: list[dict], results_path: Path,
                      dtype, device) -> list[dict]:
    """Load the model and every contender, warm them up, then measure what is not done yet
    (appending each result to results.jsonl as it finishes)."""
    from entmtp.model.loader import load_model

    loaded = load_model(cfg.model, dtype, device)
    contenders = []
    for name in cfg.methods:
        try:
            contenders.append(make_contender(name, loaded, dtype.activations, device, heads=dict(cfg.heads),
                                             cost_curve=str(cfg.cost_curve) if cfg.cost_curve else None))
        except PeerMissing as exc:
            console.print(f"[yellow]skipping {name}: {exc}[/]")
    if not contenders:
        raise EntmtpError("none of the methods can run here")
    if cfg.exact_check and dtype.activations != torch.float32:
        console.print(f"[yellow]--exact-check in {cfg.dtype}: block forwards can flip a near-tied argmax; "
                      "the contract is checked with fp32 activations (--dtype fp32, q4_1-fp32, q8_0-fp32)[/]")

    # Bank methods load (and check) every task's bank now, so a missing or foreign bank stops us
    # early; banks.json says which trees each was derived with, and on which cost curve.
    banks: dict[str, dict] = {}
    for contender in contenders:
        if hasattr(contender, "set_task"):
            for task in prompts:
                contender.set_task(task)
                banks.setdefault(contender.name, {})[task] = bank_summary(contender.decoder.bank)
            contender.set_task(next(iter(prompts)))
    if banks:
        _check_same_banks(cfg, banks)
        write_json(cfg.out / "banks.json", banks, indent=1)
        for name, per_task in banks.items():
            for task, bank in per_task.items():
                cost = bank["cost"]
                console.print(f"{name} on {task}: trees {', '.join(t['name'] for t in bank['trees'])}, recommended "
                              f"{bank['recommended']}; cost curve: {cost.get('origin', 'built into the bank')}"
                              + (f", {cost.get('cpu_class')}, {cost.get('date')}" if cost else ""))
    tokenizer, eos = loaded.tokenizer, set(loaded.eos_token_ids)
    warm_ids = tokenizer.encode_chat("Say hello.")
    for contender in contenders:
        contender.generate(warm_ids, 8)

    done = {(r["task"], r["method"], r["prompt_id"]) for r in records}
    total = sum(len(p) for p in prompts.values()) * len(contenders)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    bar = progress.add_task("bench", total=total)
    settings = cfg.settings()
    # Every (prompt, contender) not yet in results.jsonl, interleaved prompt by prompt.
    with Live(progress, console=console, refresh_per_second=4) as live:
        for task, task_prompts in prompts.items():
            for record in task_prompts:
                ids = tokenizer.encode_chat(record.prompt)
                ar_tokens = next((r["token_ids"] for r in records if r["task"] == task
                                  and r["method"] == "ar" and r["prompt_id"] == record.id), None)
                for contender in contenders:
                    progress.update(bar, description=f"{task} {record.id} {contender.name}")
                    if (task, contender.name, record.id) in done:
                        progress.advance(bar)
                        continue
                    if hasattr(contender, "set_task"):
                        contender.set_task(task)
                    run = contender.generate(ids, cfg.max_new_tokens)
                    result = _record(cfg, task, record, contender.name, run, ids, tokenizer, eos, settings)
                    if contender.name == "ar":
                        ar_tokens = run.token_ids
                    elif cfg.exact_check and ar_tokens is not None and exactness_comparable(contender.name):
                        position = first_mismatch(run.token_ids, ar_tokens)
                        result["exact_vs_ar"], result["first_mismatch"] = position is None, position
                    append_result(results_path, result)
                    records.append(result)
                    progress.advance(bar)
                    live.update(Group(progress, live_table(task, records)))
    return records


def _check_same_banks(cfg: BenchConfig, banks: dict) -> None:
    """--resume adds to results measured with banks derived on one cost curve: refuse
    when the banks derived now differ (the machine's curve was re-measured meanwhile, or
    another machine), rather than mix two in one table."""
    path = cfg.out / "banks.json"
    if not (cfg.resume and path.exists()):
        return
    earlier = read_json(path)

    def trees(entry: dict) -> list:
        return [t["name"] for t in entry.get("trees", [])]
    for method, per_task in banks.items():
        for task, bank in per_task.items():
            before = earlier.get(method, {}).get(task)
            if before is not None and trees(before) != trees(bank):
                raise UsageError(f"--resume: {method} on {task} now derives trees {', '.join(trees(bank))}, but the "
                                 f"results in {cfg.out} were measured with {', '.join(trees(before))} (the cost "
                                 "curve changed); use another --out, or --cost-curve with the earlier curve")


def bank_summary(bank) -> dict:
    """What banks.json keeps of a bank a method ran: its trees, choices and cost curve."""
    return {"name": bank.name, "trees": [{"name": t.name, "nodes": t.n_nodes - 1, "depth": t.max_depth,
                                          "step_ms": round(ms, 3), "accept": round(a, 4)}
                                         for t, ms, a in zip(bank.trees, bank.step_ms, bank.accept)],
            "static_best": bank.trees[bank.static_best].name, "recommended": str(bank.recommended),
            "ladder": [bank.trees[i].name for i in bank.ladder[0]], "cost": dict(bank.cost),
            "cost_curve": list(bank.cost_curve)}


def write_analysis(records: list[dict], summary: dict, cfg: BenchConfig, console: Console) -> None:
    from entmtp.bench.analysis import analysis_markdown, analyze, goals

    analysis = analyze(records, summary)
    bank_methods = [m for m in cfg.methods if parse_method(m)[0] in ("entmtp", "rate", "entropy")]
    headline = "entmtp" if "entmtp" in cfg.methods else (bank_methods[0] if bank_methods else None)
    analysis["goals"] = {m: goals(summary, m, parse_method(m)[1]) for m in bank_methods}
    (cfg.out / "analysis.json").write_text(json.dumps(analysis, indent=1) + "\n")
    text = analysis_markdown(analysis, analysis["goals"].get(headline, {}), headline or "-")
    (cfg.out / "analysis.md").write_text(text)
    console.print(text)


def _record(cfg: BenchConfig, task: str, record, method: str, run: Run, prompt_ids: list[int],
            tokenizer, eos: set[int], settings: dict) -> dict:
    text = tokenizer.decode([t for t in run.token_ids if t not in eos])
    quality = tasks.score(task, record, text)
    return {
        "task": task, "method": method, "prompt_id": record.id, "peer": is_peer(method),
        "prompt_tokens": len(prompt_ids), "n_tokens": len(run.token_ids), "seconds": run.seconds,
        "prefill_seconds": run.prefill_seconds, "steps": run.steps,
        "accepted": [s.accepted for s in run.records], "trees": [s.tree for s in run.records],
        "entropy": [None if s.root_entropy is None else round(s.root_entropy, 4) for s in run.records],
        **_signal_columns(run.records),
        "quality": quality, "quality_metric": tasks.QUALITY_NAMES.get(task) if quality is not None else None,
        "exact_vs_ar": None, "first_mismatch": None,
        "token_ids": run.token_ids, "text": text, "settings": settings,
    }


def _signal_columns(steps) -> dict:
    """Per-step signals, head confidence and modeled step time, for --analysis (ours only)."""
    if not steps or steps[0].signals is None:
        return {}

    def r(value, digits=4):
        return None if value is None else round(value, digits)

    columns = {"signals": [[r(v) for v in s.signals] for s in steps],
               "confidence": [r(s.confidence) for s in steps],
               "path_value": [r(s.path_value, 6) for s in steps]}
    if steps[0].modeled_ms is not None:
        columns["modeled_ms"] = [r(s.modeled_ms, 3) for s in steps]
        columns["scheduler_seconds"] = sum(s.scheduler_seconds or 0.0 for s in steps)
        columns["step_seconds"] = sum(s.seconds for s in steps)
    return columns


