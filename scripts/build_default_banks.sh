#!/usr/bin/env bash
# Calibrate and build the shipped bank sources: default model x {hydrapp, hydra, medusa} x the four
# tasks (KINDS="hydrapp" picks kinds).
#  1. calibrate: decode each task's calibration split (entmtp/data/splits/<task>.json) with the
#     superset tree (64 nodes by prior, joined with the shipped trees); acceptance statistics and
#     the hidden-state probe (nothing is timed: sources carry no step cost);
#  2. build: the machine-free source (steps, tables, self-rollouts of a grid of trees, the probe)
#     -> trees/banks/. Each machine derives its bank from it on its own cost curve at first use.
# Resumable: a finished calibration is skipped, an interrupted one continues where it stopped;
# a task whose source is in trees/banks/ is skipped (delete it to rebuild).
# The shipped run: LIMIT= (every calibration prompt: 40/100/100/30), TOKENS=128, ROLLOUT=6
# prompts x ROLLOUT_TOKENS=64 per grid tree; about 75 minutes for hydra and medusa on a 2-core
# VM, 42 minutes for hydrapp's four on the 2-core Emerald Rapids one (26 with today's heads, 33
# for hydra's and 38 for medusa's, beside a compile, on a 2-core Zen4).
set -euo pipefail
ENTMTP=${ENTMTP:-entmtp}
LIMIT=${LIMIT:-}; TOKENS=${TOKENS:-128}; ROLLOUT=${ROLLOUT:-6}; ROLLOUT_TOKENS=${ROLLOUT_TOKENS:-64}
cal() { echo "runs/calibration/smollm2-135m-instruct-$1-$2.json"; }
mkdir -p runs/calibration trees/banks
for kind in ${KINDS:-hydrapp hydra medusa}; do
  for task in humaneval litbench gsm8k sharegpt; do
    out="trees/banks/smollm2-135m-instruct-$kind-$task.json"
    [ -f "$out" ] && grep -q entmtp-bank-source "$out" && continue
    [ -f "$(cal $kind $task)" ] || $ENTMTP calibrate --task $task --head-kind $kind \
      ${LIMIT:+--limit "$LIMIT"} --max-new-tokens "$TOKENS" --out "$(cal $kind $task)"
    $ENTMTP trees build --calibration "$(cal $kind $task)" --task $task --rollout-prompts "$ROLLOUT" \
      --rollout-tokens "$ROLLOUT_TOKENS" --out "$out"
  done
done
