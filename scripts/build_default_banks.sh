#!/usr/bin/env bash
# Calibrate and build the shipped tree banks: default model x {hydra, medusa} x the four tasks.
# Calibration decodes each task's calibration split only (entmtp/data/splits/<task>.json).
# The cost curves are this machine's: run it on an otherwise idle machine (or re-time them
# later with `entmtp calibrate --recost FILE`, then rebuild).
set -euo pipefail
ENTMTP=${ENTMTP:-entmtp}
LIMIT=${LIMIT:-30}          # calibration prompts per task
TOKENS=${TOKENS:-64}        # new tokens per calibration prompt
SUPERSET=${SUPERSET:-48}    # superset tree decoded with
REPEATS=${REPEATS:-7}       # interleaved timing rounds for the cost curve
ROLLOUT=${ROLLOUT:-6}       # calibration prompts per bank tree for the self-rollout
HEADS=${HEADS:-"hydra medusa"}
TASKS=${TASKS:-"humaneval gsm8k sharegpt litbench"}
for heads in $HEADS; do
  for task in $TASKS; do
    cal=runs/calibration/smollm2-135m-instruct-$heads-$task.json
    if [ ! -f "$cal" ]; then
      $ENTMTP calibrate --task "$task" --heads "$heads" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
        --superset-nodes "$SUPERSET" --repeats "$REPEATS" --out "$cal"
    fi
    $ENTMTP trees build --calibration "$cal" --task "$task" --rollout-prompts "$ROLLOUT" \
      --out "trees/banks/smollm2-135m-instruct-$heads-$task.json"
  done
done
