"""`entmtp bench --analysis`: how well the signals predict acceptance, which
trees the schedulers used, and how close each scheduler comes to the oracle.

Correlations are Pearson r over decode steps pooled across a task's prompts,
computed on the runs of methods with one fixed drafting tree (their accepted
length is not shaped by a scheduler). "before" signals are what a scheduler sees
before the step (EMAs, last drafting step's head confidence); "same step" ones
(head confidence and greedy path value at this step's root) are only known after
the tree is chosen and are shown for comparison.
"""
from __future__ import annotations

from entmtp.stats import pearson

SIGNAL_NAMES = ("entropy EMA (before)", "accept EMA (before)", "head confidence (before)", "probe (before)")
SAME_STEP = ("head confidence (same step)", "path value (same step)")
POLICY_PREFIX = "entmtp-"


def _fixed_tree(records: list[dict]) -> bool:
    trees = {t for r in records for t in r.get("trees", [])}
    return len(trees) == 1 and "signals" in records[0] and any(a for r in records for a in r["accepted"])


def correlations(records: list[dict]) -> dict:
    """Pearson r of each signal with the step's accepted length, and the step count."""
    accepted, before, same = [], [[] for _ in SIGNAL_NAMES], [[] for _ in SAME_STEP]
    for r in records:
        accepted.extend(r["accepted"])
        for step in r["signals"]:
            for k in range(len(SIGNAL_NAMES)):
                before[k].append(step[k] if k < len(step) else None)
        same[0].extend(r["confidence"])
        same[1].extend(r["path_value"])
    out = {name: pearson(column, accepted) for name, column in zip(SIGNAL_NAMES + SAME_STEP, before + same)}
    out["steps"] = len(accepted)
    return out


def analyze(records: list[dict], summary: dict) -> dict:
    tasks = {}
    for task, rows in summary["tasks"].items():
        by_method: dict[str, list[dict]] = {}
        for r in records:
            if r["task"] == task:
                by_method.setdefault(r["method"], []).append(r)
        corr = {m: correlations(rs) for m, rs in by_method.items() if _fixed_tree(rs)}
        schedulers = {m: row for m, row in rows.items() if "modeled_tokens_per_second" in row}
        oracle = next((row for m, row in schedulers.items() if m.split("@")[0] == "oracle"), None)
        versus = {}
        for method, row in schedulers.items():
            entry = {"tree_share": row.get("tree_share"), "scheduler_overhead": row.get("scheduler_overhead"),
                     "modeled_tokens_per_second": row["modeled_tokens_per_second"]}
            if oracle is not None:
                entry["modeled_vs_oracle"] = row["modeled_tokens_per_second"] / oracle["modeled_tokens_per_second"]
            versus[method] = entry
        tasks[task] = {"correlations": corr, "schedulers": versus}
    return {"tasks": tasks}


def goals(summary: dict, method: str, kind: str = "hydra") -> dict:
    """The issue's ratios for one bank method, per task: measured tok/s against
    the default-tree Hydra and Medusa and the bank's best static tree, and
    modeled tok/s against the oracle."""
    suffix = ("" if kind == "hydra" else "@medusa") + ("+dv" if method.endswith("+dv") else "")
    out = {}
    for task, rows in summary["tasks"].items():
        mine = rows.get(method)
        if mine is None:
            continue
        entry = {}
        for label, other in (("vs_hydra_default", "hydra"), ("vs_medusa_default", "medusa"),
                             ("vs_static_best", "static-best" + suffix), ("vs_ar", "ar")):
            speedup = mine["speedup_vs"].get(other)
            if speedup:
                entry[label] = speedup
        oracle = rows.get("oracle" + suffix)
        if oracle and "modeled_tokens_per_second" in mine:
            entry["modeled_vs_oracle"] = mine["modeled_tokens_per_second"] / oracle["modeled_tokens_per_second"]
        out[task] = entry
    return out


def analysis_markdown(analysis: dict, goal_rows: dict, method: str) -> str:
    lines = ["# entmtp bench --analysis\n",
             "Pearson r of each signal with the step's accepted length (steps pooled over prompts; "
             "methods with one fixed drafting tree).\n"]
    for task, entry in analysis["tasks"].items():
        lines.append(f"\n## {task}\n")
        if entry["correlations"]:
            names = SIGNAL_NAMES + SAME_STEP
            lines.append("| method | steps | " + " | ".join(names) + " |")
            lines.append("|---|---|" + "---|" * len(names))
            for m, corr in entry["correlations"].items():
                lines.append(f"| {m} | {corr['steps']} | " + " | ".join(
                    "-" if corr[n] is None else f"{corr[n]:+.3f}" for n in names) + " |")
        if entry["schedulers"]:
            lines.append("\n| scheduler | modeled tok/s | ÷ oracle (modeled) | overhead | tree share |")
            lines.append("|---|---|---|---|---|")
            for m, row in entry["schedulers"].items():
                share = ", ".join(f"{t} {v:.0%}" for t, v in (row["tree_share"] or {}).items())
                vs = row.get("modeled_vs_oracle")
                overhead = row.get("scheduler_overhead")
                lines.append(f"| {m} | {row['modeled_tokens_per_second']:.1f} | "
                             f"{'-' if vs is None else f'{vs:.3f}'} | "
                             f"{'-' if overhead is None else f'{overhead:.3%}'} | {share} |")
    if goal_rows:
        lines.append(f"\n## Goals for `{method}` (measured tok/s ratios with 95% CI; oracle modeled)\n")
        lines.append("| task | ÷ hydra (mc_sim_7b_63) | ÷ medusa (mc_sim_7b_63) | ÷ static-best | ÷ ar | ÷ oracle |")
        lines.append("|---|---|---|---|---|---|")
        for task, entry in goal_rows.items():
            cells = []
            for key in ("vs_hydra_default", "vs_medusa_default", "vs_static_best", "vs_ar"):
                s = entry.get(key)
                cells.append("-" if not s else f"{s['ratio']:.2f}x [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]")
            vs = entry.get("modeled_vs_oracle")
            cells.append("-" if vs is None else f"{vs:.3f}")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
