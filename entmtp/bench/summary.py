"""Per task and method: aggregate the bench records, paired bootstrap speedups, and the
summary as JSON, Markdown and a rich table."""
from __future__ import annotations

import random
from collections import Counter

from rich.console import Console
from rich.table import Table

from entmtp.bench.config import BenchConfig

BOOTSTRAP_SAMPLES = 2000


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


def print_summary(summary: dict, console: Console) -> None:
    for task, rows in summary["tasks"].items():
        metric = next((r["quality_metric"] for r in rows.values() if r.get("quality_metric")), None)
        table = Table(title=task + (f" (quality = {metric})" if metric else ""))
        for column in SUMMARY_COLUMNS:
            table.add_column(column, justify="left" if column == "method" else "right")
        for line in summary_rows(rows):
            table.add_row(*line)
        console.print(table)
