"""The README tables of scripts/bench_quant.sh: python scripts/bench_quant_table.py OUT [TASKS...]."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(out: Path, tasks: list[str]) -> None:
    steps = {d: load(out / f"step_{d}.json") for d in ("bf16", "q4_1")}
    print("| `bench-step` | weights | floor | entmtp ar | llama.cpp | ar tok/s ÷ llama.cpp's |")
    print("|---|---|---|---|---|---|")
    for name, s in steps.items():
        if s is None:
            continue
        cpp = s["peers"].get("llama.cpp", {}).get("ms")
        print(f"| {name} | {s['weight_mb']:.0f} MB | {s['floor_ms']:.1f} ms | {s['ar_ms']:.1f} ms | "
              f"{cpp:.1f} ms | {cpp / s['ar_ms']:.2f}x |" if cpp else f"| {name} | | | {s['ar_ms']:.1f} ms | - | - |")
    q = steps.get("q4_1")
    if q:
        sizes = sorted({p["nodes"] for p in q["curve"]})
        print("\n| q4_1 step, ratio to root-only | " + " | ".join(str(n) for n in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for kind in dict.fromkeys(p["heads"] for p in q["curve"]):
            pts = {p["nodes"]: p for p in q["curve"] if p["heads"] == kind}
            print(f"| {kind} | " + " | ".join(
                (f"{pts[n]['ms']:.1f} ms" if n == 0 else f"{pts[n]['ratio']:.2f}") if n in pts else ""
                for n in sizes) + " |")
    methods = None
    rows = {}
    for task in tasks:
        s = load(out / "q4_1" / task / "summary.json")
        b = load(out / "bf16" / task / "summary.json")
        if s is None:
            continue
        methods = methods or s["methods"]
        rows[task] = (s["tasks"][task], b["tasks"][task]["ar"] if b else None)
    if not rows:
        return
    print("\n| q4_1, tok/s (decode tok/s) [x llama.cpp] | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for method in methods:
        cells = []
        for task, (t, _) in rows.items():
            m, cpp = t[method], t.get("llama-cpp")
            ratio = "" if cpp is None or method == "llama-cpp" else \
                f" [{m['tokens_per_second'] / cpp['tokens_per_second']:.2f}x]"
            cells.append(f"{m['tokens_per_second']:.1f} ({m['decode_tokens_per_second']:.1f}){ratio}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    cells = [f"{b['tokens_per_second']:.1f}" if b else "-" for _, b in rows.values()]
    print("| ar in bf16 (same prompts, own run) | " + " | ".join(cells) + " |")
    print("\n| quality (ar) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))

    def quality(m: dict | None) -> str:
        return "-" if m is None or m.get("quality") is None else f"{m['quality']:.0%} {m['quality_metric']}"
    print("| q4_1 | " + " | ".join(quality(t["ar"]) for t, _ in rows.values()) + " |")
    print("| bf16 | " + " | ".join(quality(b) for _, b in rows.values()) + " |")
    exact = load(out / "exact" / "summary.json")
    if exact:
        print("\nexact check (q4_1-fp32, tokens identical to ar):")
        for task, t in exact["tasks"].items():
            print(f"- {task}: " + ", ".join(f"{m} {v['exact_match_vs_ar']}" for m, v in t.items()
                                            if v.get("exact_match_vs_ar") is not None))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["humaneval", "gsm8k", "sharegpt", "litbench"])
