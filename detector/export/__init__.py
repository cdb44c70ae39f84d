"""Deploying a trained detector: ONNX export (onnx.py, graph.py), running the exported file
with ONNX Runtime or OpenVINO (runtime.py), and `load_predictor`, which picks the runner for a
weights file by its suffix so predict, eval and serve never care which runs underneath."""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from detector.errors import ConfigError, DetectorError


class MissingExtraError(DetectorError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ExportError(DetectorError, ValueError):
    """A model or setting cannot be exported (or run) as asked; the message names the key or file."""


def require(module: str, extra: str, purpose: str):
    """`import module`, or one line naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{purpose} needs the Python package '{module}': "
                                f'pip install "detector[{extra}]"') from None


def is_onnx(weights: str | Path) -> bool:
    return Path(weights).suffix.lower() == ".onnx"


def load_predictor(weights: str | Path, device: str = "auto", score_thresh: float | None = None,
                   max_detections: int | None = None, overrides: Sequence[str] = (), compile: bool = False):
    """A predictor for `weights`: an exported `.onnx` runs in ONNX Runtime (runtime.OnnxPredictor),
    anything else is a checkpoint of `detector train` run by PyTorch (engine.predictor.Predictor),
    with `compile` through torch.compile. Both have `predict(images)`, `model`, `device`,
    `category_ids` and `category_names`."""
    if is_onnx(weights):
        if compile:
            raise ConfigError(f"--compile: {weights} is an ONNX graph, which ONNX Runtime optimizes itself; "
                              "--compile applies to PyTorch checkpoints (.pt)")
        from detector.export.runtime import OnnxPredictor

        return OnnxPredictor(weights, score_thresh=score_thresh, max_detections=max_detections, overrides=overrides)
    from detector.engine.predictor import Predictor

    return Predictor.from_checkpoint(weights, device, score_thresh, max_detections, overrides, compile)
