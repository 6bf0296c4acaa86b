#!/usr/bin/env bash
# Create .venv with the CPU build of torch and pixnet (editable) with its dev tools.
# GPU users: install your CUDA build of torch into the venv first, then run this script;
# an already-installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[dev]"
