#!/usr/bin/env bash
# Issue 13's bench goal on the machine at hand: does some static tree of MIN_NODES or more
# nodes beat plain decoding on every task? Per task (its evaluation split, never its
# calibration prompts), the TOP best Hydra candidates of MIN_NODES+ nodes on this machine's
# cost curve (entmtp trees candidates --min-nodes), benched end to end beside ar and
# hydra@tree8, all drafting over the heads' draft vocabulary (+dv), methods interleaved
# prompt by prompt. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTMTP=${ENTMTP:-.venv/bin/entmtp}
OUT=${OUT:-runs/bench-big-trees}
LIMIT=${LIMIT:-20}; TOKENS=${TOKENS:-128}; TOP=${TOP:-2}; MIN_NODES=${MIN_NODES:-8}
TASKS=${TASKS:-"humaneval gsm8k sharegpt litbench"}
mkdir -p "$OUT/cand"
$ENTMTP cost measure --head-kind hydra
for task in $TASKS; do
  [ -f "$OUT/$task/summary.json" ] && continue
  rm -rf "$OUT/cand/$task"
  $ENTMTP trees candidates "smollm2-135m-instruct-hydra-$task" --top "$TOP" --min-nodes "$MIN_NODES" \
    --out "$OUT/cand/$task" | tee "$OUT/cand/$task.txt"
  candidates=$(ls "$OUT/cand/$task"/*.json | sed 's/^/hydra@/; s/$/+dv/' | paste -sd, -)
  $ENTMTP bench --task "$task" --limit "$LIMIT" --max-new-tokens "$TOKENS" --out "$OUT/$task" \
    $( [ -f "$OUT/$task/results.jsonl" ] && echo --resume ) \
    --methods "ar,hydra@tree8+dv,$candidates"
done
for task in $TASKS; do
  echo "## $task"; sed -n '/^| method/,/^$/p' "$OUT/$task/summary.md"
done | tee "$OUT/table.md"
