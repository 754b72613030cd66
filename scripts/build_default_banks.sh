#!/usr/bin/env bash
# Calibrate and build the shipped tree banks: default model x {hydra, medusa} x the four tasks.
# Calibration uses each task's calibration split only (entmtp/data/splits/<task>.json).
# Settings are the shipped run's; machine-specific: the cost curve is this machine's.
set -euo pipefail
ENTMTP=${ENTMTP:-entmtp}
LIMIT=${LIMIT:-30}
TOKENS=${TOKENS:-64}
SUPERSET=${SUPERSET:-48}
ROLLOUT=${ROLLOUT:-6}
HEADS=${HEADS:-"hydra medusa"}
TASKS=${TASKS:-"humaneval gsm8k sharegpt litbench"}
for heads in $HEADS; do
  for task in $TASKS; do
    cal=runs/calibration/smollm2-135m-instruct-$heads-$task.json
    $ENTMTP calibrate --task "$task" --heads "$heads" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
      --superset-nodes "$SUPERSET" --repeats 5 --out "$cal"
    $ENTMTP trees build --calibration "$cal" --task "$task" --rollout-prompts "$ROLLOUT" \
      --out "trees/banks/smollm2-135m-instruct-$heads-$task.json"
  done
done
