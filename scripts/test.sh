#!/usr/bin/env bash
# Set up (if needed) and run the test suite: one worker per CPU core (pytest-xdist; a
# module's tests stay in one worker, so module fixtures are built once), each worker's
# torch on one thread. PIXNET_TEST_WORKERS=0 runs in this process; extra arguments go to
# pytest (e.g. tests/test_pipeline.py, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -q -n "${PIXNET_TEST_WORKERS:-auto}" --dist loadfile "$@"
