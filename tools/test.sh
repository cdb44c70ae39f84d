#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
