#!/usr/bin/env bash
# The commands behind the README's bench tables (default model, CPU, evaluation split).
#   1. speed and quality, bf16: every method and installed peer, interleaved;
#   2. greedy exactness, fp32: speculative methods and trees against ar, 52 prompts (13 per task).
# LIMIT / TOKENS scale run 1; OUT picks the folder (results.jsonl, summary.json/md, PNGs).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/bench-readme}"
ENTMTP="${ENTMTP:-.venv/bin/entmtp}"
"$ENTMTP" bench --task all --limit "${LIMIT:-4}" --max-new-tokens "${TOKENS:-96}" \
  --methods ar,medusa,hydra,medusa@tree8,hydra@tree8,transformers,transformers-pld,llama-cpp \
  --out "$OUT/speed" --plot
"$ENTMTP" bench --task all --limit 13 --max-new-tokens 32 --exact-check \
  --methods ar,medusa,medusa@tree16,medusa@chain4 --out "$OUT/exact-medusa"
"$ENTMTP" bench --task all --limit 13 --max-new-tokens 32 --exact-check \
  --methods ar,hydra --out "$OUT/exact-hydra"
