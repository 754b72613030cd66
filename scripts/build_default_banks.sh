#!/usr/bin/env bash
# Calibrate and build the shipped tree banks: default model x {hydra, medusa} x the four tasks.
#  1. calibrate: decode each task's calibration split (entmtp/data/splits/<task>.json) with a
#     superset tree; acceptance statistics and the hidden-state probe (no timing yet);
#  2. recost: time the cost curve of every calibration on a quiet machine, interleaved rounds;
#  3. build: trees, hulls, tables, self-rollout, ladder, recommended scheduler -> trees/banks/.
# The shipped run: LIMIT=24 TOKENS=64 SUPERSET=32 REPEATS=9 ROLLOUT=5, step 1 as two
# single-thread streams side by side (STREAMS=2), about 45 min on the 2-core VM in all.
set -euo pipefail
ENTMTP=${ENTMTP:-entmtp}
LIMIT=${LIMIT:-24}; TOKENS=${TOKENS:-64}; SUPERSET=${SUPERSET:-32}
REPEATS=${REPEATS:-9}; ROLLOUT=${ROLLOUT:-5}; STREAMS=${STREAMS:-2}
COMBOS=("hydra humaneval" "hydra gsm8k" "hydra sharegpt" "hydra litbench"
        "medusa humaneval" "medusa gsm8k" "medusa sharegpt" "medusa litbench")
cal() { echo "runs/calibration/smollm2-135m-instruct-$1-$2.json"; }
mkdir -p runs/calibration trees/banks

calibrate_stream() {  # every STREAMS-th combo, starting at $1
  for ((i = $1; i < ${#COMBOS[@]}; i += STREAMS)); do
    set -- ${COMBOS[$i]}
    [ -f "$(cal "$1" "$2")" ] && continue
    OMP_NUM_THREADS=$((2 / STREAMS > 0 ? 2 / STREAMS : 1)) $ENTMTP calibrate --task "$2" --head-kind "$1" \
      --limit "$LIMIT" --max-new-tokens "$TOKENS" --superset-nodes "$SUPERSET" --repeats 1 --out "$(cal "$1" "$2")"
  done
}
for ((s = 0; s < STREAMS; s++)); do calibrate_stream "$s" & done
wait
for combo in "${COMBOS[@]}"; do
  set -- $combo
  $ENTMTP calibrate --recost "$(cal "$1" "$2")" --repeats "$REPEATS"
done
for combo in "${COMBOS[@]}"; do
  set -- $combo
  $ENTMTP trees build --calibration "$(cal "$1" "$2")" --task "$2" --rollout-prompts "$ROLLOUT" \
    --out "trees/banks/smollm2-135m-instruct-$1-$2.json"
done
