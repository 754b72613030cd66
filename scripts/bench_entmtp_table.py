"""The README's EntMTP table from scripts/bench_entmtp.sh's folders: per task, measured
tok/s of each method, and the issue's ratios (EntMTP / ar, / the best static tree of
all candidates measured end to end, / the oracle's modeled rate). $DV: the suffix the
script gave the bank methods and candidates ("+dv": drafting over the draft vocabulary)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(out: Path, tasks: list[str], dv: str = "") -> None:
    entmtp, oracle_name, static = "entmtp" + dv, "oracle" + dv, ("hydra", "static-best" + dv)  # + hydra@FILE
    rows, notes = {}, []
    for task in tasks:
        summary = json.loads((out / task / "summary.json").read_text())
        rows[task] = summary["tasks"][task]
        bank = (summary.get("banks", {}).get(entmtp) or summary.get("banks", {}).get("entmtp", {})).get(task, {})
        cost = bank.get("cost", {})
        notes.append(f"- {task}: bank trees {', '.join(t['name'] for t in bank.get('trees', []))}; recommended "
                     f"{bank.get('recommended')}; cost curve {cost.get('origin')} ({cost.get('cpu_class')}, "
                     f"{cost.get('date')}); {rows[task]['ar'].get('n_prompts')} prompts")
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    print("| method | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for method in methods:
        label = ("best candidate #" + method.split("/")[-1].removesuffix(dv)[:-5] + dv if method.startswith("hydra@")
                 and method.endswith(".json" + dv) else method)
        cells = []
        for task in tasks:
            row = rows[task].get(method)
            cells.append("-" if row is None
                         else f"{row['tokens_per_second']:.1f} ({row.get('tokens_per_step') or 0:.2f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("| ratio | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    ratios = {f"{entmtp} / ar": [], f"{entmtp} / best static (all candidates, measured)": [], "best static": [],
              f"{entmtp} / oracle (modeled)": []}
    for task in tasks:
        r = rows[task]
        statics = {m: v["tokens_per_second"] for m, v in r.items() if m in static or m.startswith("hydra@")}
        best = max(statics, key=statics.get)
        ratios[f"{entmtp} / ar"].append(f"{r[entmtp]['tokens_per_second'] / r['ar']['tokens_per_second']:.3f}")
        ratios[f"{entmtp} / best static (all candidates, measured)"].append(
            f"{r[entmtp]['tokens_per_second'] / statics[best]:.3f}")
        ratios["best static"].append(best.split("/")[-1])
        oracle = r.get(oracle_name, {}).get("modeled_tokens_per_second")
        mine = r[entmtp].get("modeled_tokens_per_second")
        ratios[f"{entmtp} / oracle (modeled)"].append(f"{mine / oracle:.3f}" if oracle and mine else "-")
    for name, cells in ratios.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:], os.environ.get("DV", ""))
