#!/usr/bin/env bash
# The main job from a fresh clone: set up .venv, train the default model on the embedded
# synthetic set (drawn on first use), evaluate it, and predict on a few val images.
# Extra arguments are config overrides, e.g. `bash tools/demo.sh train.epochs=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
start=$(date +%s)
.venv/bin/detector train configs/demo.yaml "$@"
samples=$(ls ~/.cache/detector/synthetic/val/images/*.jpg | head -4)
# shellcheck disable=SC2086
.venv/bin/detector predict --weights runs/demo/weights/best.pt $samples --out runs/demo/predictions --score-thresh 0.5
echo "demo finished in $(( $(date +%s) - start )) s"
echo "run folder: $(pwd)/runs/demo   (results.csv, metrics.json, curves.png, eval/, weights/, predictions/)"
