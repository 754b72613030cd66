#!/usr/bin/env bash
# The quantized-weights numbers of the README (issue 17), on the machine at hand, each
# comparison side by side in one run: run it on an otherwise idle machine.
#   1. bench-step in bf16 and in q4_1 (floor, ar, llama.cpp on the same GGUF, cost curve);
#   2. per task, the evaluation split in q4_1: ar, llama.cpp (llama-cpp-python, the same
#      file), Hydra with an 8-node tree over the draft vocabulary, the derived bank's
#      static-best and entmtp, interleaved prompt by prompt; then ar in bf16 on the same
#      prompts for the quality beside it (HumanEval pass@1, GSM8K accuracy);
#   3. the exactness check with fp32 activations (q4_1-fp32) over every task.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTMTP=${ENTMTP:-.venv/bin/entmtp}
OUT=${OUT:-runs/bench-quant}
LIMIT=${LIMIT:-20}; TOKENS=${TOKENS:-128}
EXACT_LIMIT=${EXACT_LIMIT:-13}; EXACT_TOKENS=${EXACT_TOKENS:-64}
TASKS=${TASKS:-"humaneval gsm8k sharegpt litbench"}
METHODS=${METHODS:-ar,llama-cpp,hydra@tree8+dv,static-best,entmtp}
mkdir -p "$OUT"
for dtype in bf16 q4_1; do
  [ -f "$OUT/step_$dtype.json" ] || $ENTMTP bench-step --dtype "$dtype" --repeats 7 --json "$OUT/step_$dtype.json" \
    | tee "$OUT/step_$dtype.txt"
done
$ENTMTP cost measure --head-kind hydra --dtype q4_1
for task in $TASKS; do
  [ -f "$OUT/q4_1/$task/summary.json" ] || $ENTMTP bench --task "$task" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
    --dtype q4_1 --methods "$METHODS" --out "$OUT/q4_1/$task"
  [ -f "$OUT/bf16/$task/summary.json" ] || $ENTMTP bench --task "$task" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
    --dtype bf16 --methods ar --out "$OUT/bf16/$task"
done
[ "$EXACT_LIMIT" = 0 ] || [ -f "$OUT/exact/summary.json" ] || $ENTMTP bench --task all --limit "$EXACT_LIMIT" \
  --max-new-tokens "$EXACT_TOKENS" --exact-check --dtype q4_1-fp32 --methods "${EXACT_METHODS:-ar,entmtp,hydra,medusa}" \
  --out "$OUT/exact"
