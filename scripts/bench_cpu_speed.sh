#!/usr/bin/env bash
# The measurements behind the "CPU speed" README section, on the machine at hand
# (run nothing else meanwhile; the numbers are ratios from one interleaved run):
#   1. `bench-step`: CPU class, weight-streaming floor, ar vs peers, prefill, and the
#      speculative cost curve of Hydra and Medusa heads;
#   2. `bench`: do trees of 8 and 16 nodes beat plain decoding in tok/s on every task,
#      with the full vocabulary and with the heads' draft vocabulary (+dv)?
# LIMIT / TOKENS scale run 2; OUT picks the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/bench-cpu}"
ENTMTP="${ENTMTP:-.venv/bin/entmtp}"
mkdir -p "$OUT"
"$ENTMTP" kernels tune
"$ENTMTP" bench-step --repeats 7 --new-tokens 48 --json "$OUT/step.json" | tee "$OUT/step.txt"
"$ENTMTP" bench --task all --limit "${LIMIT:-4}" --max-new-tokens "${TOKENS:-96}" \
  --methods ar,hydra@tree8,hydra@tree8+dv,hydra@tree16+dv,medusa@tree8,medusa@tree8+dv,medusa@tree16+dv,entmtp,llama-cpp \
  --out "$OUT/speed"
