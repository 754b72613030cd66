#!/usr/bin/env bash
# Hydra++ (hydrapp), Hydra and Medusa heads for the default model, trained on ONE recorded
# corpus with the teacher (distillation) loss and with hard labels, for issue 15's comparison.
# The first run generates the corpus; the others copy its prompts.json + corpus.pt. Every run
# checkpoints every 100 steps: rerun this script to resume; STEPS=N trains every run longer;
# RUNS="hydrapp:teacher hydra:teacher" picks runs. Held-out top-1/top-5 land in each
# DIR/heads/entmtp_heads.json (training.held_out_top1/top5).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/heads-v2}"
common=(--sharegpt-prompts "${PROMPTS:-600}" --code-prompts "${CODE_PROMPTS:-200}"
        --gen-tokens "${GEN_TOKENS:-128}" --steps "${STEPS:-1500}" --batch-size "${BATCH:-128}"
        --n-layers "${LAYERS:-1}" --dtype "${DTYPE:-bf16}" --seed 0)
first=""
for run in ${RUNS:-hydrapp:teacher hydra:teacher medusa:teacher hydrapp:hard hydra:hard medusa:hard}; do
  kind=${run%%:*} loss=${run##*:} dir="$OUT/${run%%:*}-${run##*:}"
  if [ -n "$first" ] && [ ! -e "$dir/corpus.pt" ]; then
    mkdir -p "$dir" && cp "$first/prompts.json" "$first/corpus.pt" "$dir/"
  fi
  "${ENTMTP:-entmtp}" heads train --head-kind "$kind" --loss "$loss" --out "$dir" "${common[@]}"
  first="${first:-$dir}"
done
