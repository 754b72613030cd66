"""`entmtp bench`: every method and peer on the four tasks, in one run.

Methods interleave prompt by prompt (A B C A B C ...) after a warm-up, so
machine drift lands on all of them alike. Each finished (prompt, method) is
appended to results.jsonl at once; `--resume` skips what is already there.
summary.json / summary.md are rebuilt from results.jsonl at the end, so a
resumed or interrupted run summarises everything measured so far.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import random
from collections import Counter
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
from rich.table import Table

from entmtp import tasks
from entmtp.bench.contenders import (
    PeerMissing,
    Run,
    exactness_comparable,
    is_peer,
    make_contender,
    parse_method,
)
from entmtp.errors import EntmtpError, UsageError

RESULTS = "results.jsonl"
BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    out: Path
    model: str | None = None
    data: Path | None = None
    split: str = "evaluation"
    limit: int | None = None
    max_new_tokens: int = 128
    seed: int = 0
    dtype: str = "bf16"
    device: str = "cpu"
    exact_check: bool = False
    resume: bool = False
    plot: bool = False
    analysis: bool = False

    def settings(self) -> dict:
        """What must match for --resume to add to an existing results.jsonl."""
        return {"model": self.model, "data": str(self.data) if self.data else None, "split": self.split,
                "max_new_tokens": self.max_new_tokens, "dtype": self.dtype, "device": self.device}


def parse_tasks(text: str) -> tuple[str, ...]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return tasks.TASKS
    for name in names:
        if name not in tasks.TASKS:
            raise UsageError(f"unknown task {name!r}; available: {', '.join(tasks.TASKS)}, all")
    if not names:
        raise UsageError("--task is empty")
    return tuple(dict.fromkeys(names))


def parse_methods(text: str, exact_check: bool) -> tuple[str, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods is empty")
    for name in names:
        parse_method(name)
    if exact_check:
        # Exactness is measured against ar's tokens, so ar runs first on every prompt.
        names = ["ar"] + [n for n in names if n != "ar"]
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------- results file
def open_results(cfg: BenchConfig, console: Console) -> tuple[Path, list[dict]]:
    """Create --out, check it is writable, and load earlier results for --resume."""
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        probe = cfg.out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EntmtpError(f"cannot write to --out {cfg.out}: {exc.strerror or exc}") from None
    path = cfg.out / RESULTS
    if not path.exists():
        return path, []
    if not cfg.resume:
        raise EntmtpError(f"{path} already exists; pass --resume to continue it or choose another --out")
    done, torn = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1  # a line cut by an interrupt: that prompt is simply run again
    settings = cfg.settings()
    for record in done:
        if record.get("settings") != settings:
            raise EntmtpError(f"{path} was made with other settings ({record.get('settings')}); "
                              f"use another --out or the same flags")
    if torn:
        # Rewrite without the torn line(s), so appends start on a line of their own.
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done), encoding="utf-8")
        console.print(f"[yellow]{torn} unreadable line(s) in {path} dropped; those prompts run again[/]")
    return path, done


def append_result(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------- summary
def _ratio(numerators: list[float], denominators: list[float]) -> float:
    total = sum(denominators)
    return sum(numerators) / total if total > 0 else float("nan")


def aggregate(records: list[dict]) -> dict:
    """Speed, acceptance and quality of one (task, method) from its per-prompt records."""
    tokens = [r["n_tokens"] for r in records]
    seconds = [r["seconds"] for r in records]
    row = {
        "n_prompts": len(records),
        "n_tokens": sum(tokens),
        "tokens_per_second": _ratio(tokens, seconds),
        "tokens_per_second_mean": sum(t / s for t, s in zip(tokens, seconds) if s > 0) / max(1, len(records)),
    }
    if all(r["prefill_seconds"] is not None for r in records):
        decode = [r["seconds"] - r["prefill_seconds"] for r in records]
        row["decode_tokens_per_second"] = _ratio(tokens, decode)
        row["decode_tokens_per_second_mean"] = (
            sum(t / d for t, d in zip(tokens, decode) if d > 0) / max(1, len(records)))
        row["prefill_ms_mean"] = 1000 * sum(r["prefill_seconds"] for r in records) / max(1, len(records))
    if all(r["steps"] for r in records):
        steps = [r["steps"] for r in records]
        row["tokens_per_step"] = _ratio(tokens, steps)
        if "decode_tokens_per_second" in row:
            # Decode steps only: the prefill is step 1 and has its own time.
            decode_steps = [s - 1 for s in steps]
            row["ms_per_step"] = 1000 * _ratio([r["seconds"] - r["prefill_seconds"] for r in records], decode_steps)
    trees = Counter(tree for r in records for tree in r.get("trees", []))
    if trees:
        total = sum(trees.values())
        row["tree_share"] = {name: count / total for name, count in trees.most_common()}
    accepted = Counter(a for r in records for a in r.get("accepted", []))
    if accepted:
        row["accepted_histogram"] = {str(k): accepted[k] for k in sorted(accepted)}
    if records and all(r.get("modeled_ms") is not None for r in records):
        # Calibrated step times of the trees chosen: the only speed the oracle has,
        # and the like-for-like basis for comparing a scheduler with it.
        modeled = [(r["prefill_seconds"] or 0.0) + sum(r["modeled_ms"]) / 1000 for r in records]
        row["modeled_tokens_per_second"] = _ratio(tokens, modeled)
        row["scheduler_overhead"] = _ratio([r["scheduler_seconds"] for r in records],
                                           [r["step_seconds"] for r in records])
    checked = [r for r in records if r.get("exact_vs_ar") is not None]
    if checked:
        row["exact_match_vs_ar"] = sum(r["exact_vs_ar"] for r in checked) / len(checked)
        row["mismatches"] = [{"prompt_id": r["prompt_id"], "position": r["first_mismatch"]}
                             for r in checked if not r["exact_vs_ar"]]
    scored = [r for r in records if r.get("quality") is not None]
    if scored:
        row["quality"] = sum(r["quality"] for r in scored) / len(scored)
        row["quality_metric"] = scored[0]["quality_metric"]
    return row


def bootstrap_speedup(mine: list[dict], theirs: list[dict], rng: random.Random) -> dict | None:
    """tok/s ratio (total tokens / total time) on the prompts both ran, with a
    paired bootstrap 95% interval over prompts."""
    by_id = {r["prompt_id"]: r for r in theirs}
    pairs = [(r, by_id[r["prompt_id"]]) for r in mine if r["prompt_id"] in by_id]
    if not pairs:
        return None

    def ratio(sample):
        a = _ratio([p[0]["n_tokens"] for p in sample], [p[0]["seconds"] for p in sample])
        b = _ratio([p[1]["n_tokens"] for p in sample], [p[1]["seconds"] for p in sample])
        return a / b if b > 0 else float("nan")

    draws = sorted(ratio([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(BOOTSTRAP_SAMPLES))
    low, high = draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]
    return {"ratio": ratio(pairs), "ci95": [low, high], "n_prompts": len(pairs)}


def summarize(records: list[dict], cfg: BenchConfig, machine: dict) -> dict:
    rng = random.Random(cfg.seed)
    per_task: dict[str, dict] = {}
    for task in dict.fromkeys(r["task"] for r in records):
        by_method: dict[str, list[dict]] = {}
        for r in records:
            if r["task"] == task:
                by_method.setdefault(r["method"], []).append(r)
        rows = {}
        for method, mine in by_method.items():
            row = aggregate(mine)
            row["speedup_vs"] = {other: bootstrap_speedup(mine, theirs, rng)
                                 for other, theirs in by_method.items() if other != method}
            rows[method] = row
        per_task[task] = rows
    return {"settings": cfg.settings(), "methods": list(cfg.methods), "machine": machine,
            "litbench_data": "WritingPrompts test (a stand-in: LitBench text is not available offline)"
            if cfg.data is None else str(cfg.data), "tasks": per_task}


def _fmt(value, pattern="{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


SUMMARY_COLUMNS = ("method", "tok/s", "tok/s per prompt", "decode tok/s", "tokens/step", "ms/step",
                   "exact vs ar", "quality", "speedup vs ar [95% CI]", "modeled tok/s")


def summary_rows(rows: dict) -> list[list[str]]:
    lines = []
    for method, row in rows.items():
        vs_ar = row.get("speedup_vs", {}).get("ar")
        quality = row.get("quality")
        lines.append([
            method, _fmt(row["tokens_per_second"]), _fmt(row["tokens_per_second_mean"]),
            _fmt(row.get("decode_tokens_per_second")), _fmt(row.get("tokens_per_step"), "{:.2f}"),
            _fmt(row.get("ms_per_step")), _fmt(row.get("exact_match_vs_ar"), "{:.0%}"),
            "-" if quality is None else f"{quality:.1%}",
            "-" if not vs_ar else f"{vs_ar['ratio']:.2f}x [{vs_ar['ci95'][0]:.2f}, {vs_ar['ci95'][1]:.2f}]",
            _fmt(row.get("modeled_tokens_per_second")),
        ])
    return lines


def summary_markdown(summary: dict) -> str:
    settings = summary["settings"]
    out = ["# entmtp bench\n",
           (f"{summary['machine'].get('cpu', '?')}, torch {summary['machine'].get('torch')}, "
            f"{settings['dtype']} on {settings['device']}, greedy, up to {settings['max_new_tokens']} new tokens, "
            f"{settings['split']} split.\n")]
    for task, rows in summary["tasks"].items():
        n = max(r["n_prompts"] for r in rows.values())
        label = " (WritingPrompts stand-in)" if task == "litbench" and settings["data"] is None else ""
        metric = next((r["quality_metric"] for r in rows.values() if r.get("quality_metric")), None)
        out.append(f"\n## {task}{label}: {n} prompts" + (f", quality = {metric}" if metric else "") + "\n")
        out.append("| " + " | ".join(SUMMARY_COLUMNS) + " |")
        out.append("|" + "---|" * len(SUMMARY_COLUMNS))
        for line in summary_rows(rows):
            out.append("| " + " | ".join(line) + " |")
        mismatches = [(m, x) for m, r in rows.items() for x in r.get("mismatches", [])]
        if mismatches:
            out.append("\nMismatches against ar: " + "; ".join(
                f"{m} {x['prompt_id']} at token {x['position']}" for m, x in mismatches))
    return "\n".join(out) + "\n"


def live_table(task: str, records: list[dict]) -> Table:
    table = Table(title=f"{task} so far")
    for column in SUMMARY_COLUMNS[:6] + ("quality",):
        table.add_column(column, justify="left" if column == "method" else "right")
    by_method: dict[str, list[dict]] = {}
    for r in records:
        if r["task"] == task:
            by_method.setdefault(r["method"], []).append(r)
    for line in summary_rows({m: aggregate(rs) for m, rs in by_method.items()}):
        table.add_row(*line[:6], line[7])
    return table


def machine_facts(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def first_mismatch(tokens: list[int], reference: list[int]) -> int | None:
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


# ------------------------------------------------------------------------- run
def run_bench(cfg: BenchConfig, console: Console | None = None) -> dict:
    from entmtp.model.loader import load_model, parse_dtype, resolve_device

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

    loaded = load_model(cfg.model, dtype, device)
    contenders = []
    for name in cfg.methods:
        try:
            contenders.append(make_contender(name, loaded, dtype, device))
        except PeerMissing as exc:
            console.print(f"[yellow]skipping {name}: {exc}[/]")
    if not contenders:
        raise EntmtpError("none of the methods can run here")
    if cfg.exact_check and cfg.dtype != "fp32":
        console.print("[yellow]--exact-check in bf16: block forwards can flip a near-tied argmax; "
                      "the contract is checked in fp32 (--dtype fp32)[/]")

    # Bank methods load (and check) every task's bank now, so a missing or foreign bank stops us early.
    for contender in contenders:
        for task in prompts:
            if hasattr(contender, "set_task"):
                contender.set_task(task)
        if hasattr(contender, "set_task"):
            contender.set_task(next(iter(prompts)))
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

    summary = summarize(records, cfg, machine_facts(cfg.device))
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (cfg.out / "summary.md").write_text(summary_markdown(summary))
    if cfg.plot:
        from entmtp.bench.plots import write_plots
        write_plots(summary, records, cfg.out)
    if cfg.analysis:
        write_analysis(records, summary, cfg, console)
    return summary


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


def print_summary(summary: dict, console: Console) -> None:
    for task, rows in summary["tasks"].items():
        metric = next((r["quality_metric"] for r in rows.values() if r.get("quality_metric")), None)
        table = Table(title=task + (f" (quality = {metric})" if metric else ""))
        for column in SUMMARY_COLUMNS:
            table.add_column(column, justify="left" if column == "method" else "right")
        for line in summary_rows(rows):
            table.add_row(*line)
        console.print(table)

