#!/usr/bin/env bash
# The EntMTP table of the README: the banks' schedulers against the default-tree Hydra
# and Medusa, the bank's best static tree and the oracle, on every task's evaluation
# split (bf16, greedy, one run, methods interleaved prompt by prompt; run it on an
# otherwise idle machine); then the exactness check of the bank methods in fp32.
set -euo pipefail
ENTMTP=${ENTMTP:-entmtp}
LIMIT=${LIMIT:-5}
TOKENS=${TOKENS:-64}
$ENTMTP bench --task all --limit "$LIMIT" --max-new-tokens "$TOKENS" \
  --methods ar,hydra,medusa,entmtp,entropy,rate-probe,rate-now,static-best,oracle,entmtp@medusa,static-best@medusa,oracle@medusa \
  --out runs/bench-entmtp/speed --analysis
$ENTMTP bench --task all --limit "${EXACT_LIMIT:-3}" --max-new-tokens 32 --exact-check \
  --methods ar,entmtp,entropy,rate-now,static-best,oracle,entmtp@medusa,oracle@medusa \
  --out runs/bench-entmtp/exact
