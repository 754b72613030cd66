#!/usr/bin/env bash
# The EntMTP table of the README (issue 14), on the machine at hand: every task's
# evaluation split (never its calibration prompts), bf16, greedy, methods interleaved
# prompt by prompt, one bench run per task. Run it on an otherwise idle machine.
#   0. this machine's cost curves (cached; a bank source is derived on them);
#   1. per task: the source's TOP best static trees among all its candidates on that curve
#      (entmtp trees candidates), benched end to end beside ar, Hydra and Medusa with the
#      default tree (mc_sim_7b_63), the derived bank's static-best, the paper's entropy
#      ladder, the rate scheduler (SCHEDULERS), the recommended entmtp and the oracle;
#   2. the exactness check in fp32 (EXACT_LIMIT prompts per task, ar's tokens; 0 skips it);
#   3. the table (scripts/bench_entmtp_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ENTMTP=${ENTMTP:-.venv/bin/entmtp}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/bench-entmtp}
LIMIT=${LIMIT:-20}; TOKENS=${TOKENS:-128}; TOP=${TOP:-2}
# The schedulers benched beside the static trees (the rate signals not listed here are
# replayed on the calibration steps only: `entmtp trees show BANK`).
SCHEDULERS=${SCHEDULERS:-entropy,rate-accept,rate-all,entmtp,oracle}
EXACT_LIMIT=${EXACT_LIMIT:-13}; EXACT_TOKENS=${EXACT_TOKENS:-64}
# DV=+dv: the bank methods and the candidates draft over the heads' draft vocabulary (their
# curve measured so, the candidates ranked on it); DV= drafts over the whole vocabulary.
export DV=${DV-+dv}
VOCAB=$( [ -n "$DV" ] && echo heads || echo off )
with_dv() { tr ',' '\n' | sed "s/\$/$DV/" | paste -sd, -; }
TASKS=${TASKS:-"humaneval gsm8k sharegpt litbench"}
mkdir -p "$OUT/cand"
$ENTMTP cost measure --head-kind hydra --draft-vocab "$VOCAB"
$ENTMTP cost measure --head-kind medusa --draft-vocab "$VOCAB"
for task in $TASKS; do
  [ -f "$OUT/$task/summary.json" ] && continue
  rm -rf "$OUT/cand/$task"
  $ENTMTP trees candidates "smollm2-135m-instruct-hydra-$task" --top "$TOP" --out "$OUT/cand/$task" \
    --draft-vocab "$VOCAB" | tee "$OUT/cand/$task.txt"
  candidates=$(ls "$OUT/cand/$task"/*.json | sed 's/^/hydra@/' | paste -sd, - | with_dv)
  $ENTMTP bench --task "$task" --limit "$LIMIT" --max-new-tokens "$TOKENS" --analysis --out "$OUT/$task" \
    $( [ -f "$OUT/$task/results.jsonl" ] && echo --resume ) \
    --methods "ar,hydra,medusa,$(echo "static-best,$SCHEDULERS" | with_dv),$candidates"
done
[ "$EXACT_LIMIT" = 0 ] || [ -f "$OUT/exact/summary.json" ] || $ENTMTP bench --task all --limit "$EXACT_LIMIT" --max-new-tokens "$EXACT_TOKENS" \
  --exact-check --methods "ar,$(echo "${EXACT_METHODS:-entmtp,rate-all,entmtp@medusa}" | with_dv)" --out "$OUT/exact"
$PYTHON scripts/bench_entmtp_table.py "$OUT" $TASKS | tee "$OUT/table.md"
