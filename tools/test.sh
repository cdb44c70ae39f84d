#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite in parallel (extra args go
# to pytest; DETECTOR_TEST_WORKERS=0 runs it in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# One pytest worker per core (pytest-xdist), each test file on one worker (its module fixtures are
# built once), and one torch thread per worker: workers x threads = cores, never more.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest -q -n "${DETECTOR_TEST_WORKERS:-auto}" --dist loadfile "$@"
