#!/usr/bin/env bash
# docs/analysis.md's ("Data and error analysis") pictures and numbers, made from the demo set:
# `detector data`, a short training (a model that still makes every kind of error), `detector
# analyze`; the pictures are copied, downscaled, into docs/images/. Usage: bash tools/analysis_demo.sh [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
ITERS=${1:-60}
RUN=runs/analysis_demo

"$PYTHON" -m detector.cli data configs/demo.yaml --out "$RUN/data"
"$PYTHON" -m detector.cli train configs/demo.yaml train.max_iters="$ITERS" output="$RUN"
# the run's last evaluation wrote eval/ground_truth.json and eval/predictions.json
"$PYTHON" -m detector.cli analyze --gt "$RUN/eval/ground_truth.json" --predictions "$RUN/eval/predictions.json"

"$PYTHON" - "$RUN" <<'PY'
import sys
from pathlib import Path

import cv2

run, docs = Path(sys.argv[1]), Path("docs/images")
docs.mkdir(parents=True, exist_ok=True)
pictures = {"data/labels.png": 0.7, "data/anchor_fit.png": 0.6, "data/train_batch0.jpg": 0.6,
            "eval/analysis/errors.png": 0.7, "eval/analysis/confusion_matrix.png": 0.7,
            "eval/analysis/f1_curve.png": 0.7, "eval/analysis/worst_images.jpg": 0.5}
for name, scale in pictures.items():
    image = cv2.imread(str(run / name))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    target = docs / f"analysis_{Path(name).name}"
    cv2.imwrite(str(target), small, [cv2.IMWRITE_JPEG_QUALITY, 85] if target.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{target}: {target.stat().st_size // 1024} KB")
PY
