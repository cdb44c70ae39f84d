#!/usr/bin/env bash
# The main job from a fresh clone: set up .venv, describe the default model, and run it on a
# real photo. (Until training lands, its detection heads are untrained.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
sample=${1:-../shared/data/raccoon/images/raccoon-1.jpg}
.venv/bin/detector model configs/lite0.yaml
.venv/bin/detector predict "$sample" --out runs/demo
echo "run folder: $(pwd)/runs/demo"
