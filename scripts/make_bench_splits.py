"""Make the recorded calibration / evaluation splits in entmtp/data/splits/.

Run once; the files are committed and never regenerated casually, because
calibration (issue 6) must never see an evaluation prompt. ShareGPT ids used to
train the shipped heads (entmtp/data/heads/*/*/training_prompts.json) are
excluded from both splits.

    .venv/bin/python scripts/make_bench_splits.py
"""
import json
import random
from pathlib import Path

from entmtp.tasks import SPLITS_DIR, Skipped, load_task

SIZES = {"humaneval": (40, 124), "sharegpt": (100, 300), "gsm8k": (100, 300), "litbench": (30, 70)}
HEADS_DIR = Path(__file__).resolve().parents[1] / "entmtp" / "data" / "heads"


def training_ids() -> set[str]:
    ids = set()
    for path in HEADS_DIR.glob("*/*/training_prompts.json"):
        ids.update(p["id"] for p in json.loads(path.read_text())["prompts"])
    return ids


def main() -> None:
    excluded = training_ids()
    SPLITS_DIR.mkdir(parents=True, exist_ok=True)
    for task, (n_cal, n_eval) in SIZES.items():
        records = load_task(task, None, Skipped())
        pool = [r.id for r in records if r.id not in excluded]
        if task == "sharegpt":
            # Chat prompts a 2K-context model can take whole, and no duplicates.
            seen, kept = set(), []
            for r in records:
                if r.id not in excluded and 20 <= len(r.prompt) <= 2000 and r.prompt not in seen:
                    seen.add(r.prompt)
                    kept.append(r.id)
            pool = kept
        rng = random.Random(f"entmtp-splits-{task}")
        chosen = rng.sample(pool, min(len(pool), n_cal + n_eval))
        split = {"task": task, "seed": f"entmtp-splits-{task}", "made_by": "scripts/make_bench_splits.py",
                 "excluded_training_ids": len(excluded & {r.id for r in records}),
                 "calibration": chosen[:n_cal], "evaluation": chosen[n_cal:]}
        (SPLITS_DIR / f"{task}.json").write_text(json.dumps(split, indent=1) + "\n")
        print(task, len(split["calibration"]), len(split["evaluation"]))


if __name__ == "__main__":
    main()
