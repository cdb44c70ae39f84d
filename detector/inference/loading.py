"""`load_predictor`: the predictor of a weights file, its backend chosen by the file. eval,
analyze, predict and serve load through it, so every command runs every backend:

  .pt    a checkpoint of `detector train`, run by PyTorch (inference/predictor.py)
  .onnx  a file of `detector export`, run by ONNX Runtime, or by OpenVINO with
         backend="openvino" (inference/exported.py), in f32 unless precision="bf16" (OpenVINO only)

Either may predict sliced (inference/slicing.py) and with test-time augmentation
(inference/tta.py, around the slicing): by the `inference.slice` and `inference.tta` of the
config saved with the weights, or as `slicing` and `tta` say.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detector.errors import ConfigError


def is_onnx(weights: str | Path) -> bool:
    return Path(weights).suffix.lower() == ".onnx"


def load_predictor(weights: str | Path, device: str = "auto", score_thresh: float | None = None,
                   max_detections: int | None = None, overrides: Sequence[str] = (), compile: bool = False,
                   backend: str | None = None, precision: str | None = None,
                   slicing: "SliceSettings | dict | None" = None, tta: "TtaSettings | dict | None" = None):
    """A predictor for `weights` (see the module's table). Every one has `predict(images)`,
    `check_size(height, width, name)`, `model`, `device`, `category_ids` and `category_names`.
    `overrides` are test-time settings (inference/overrides.py); `compile` runs a checkpoint
    through torch.compile; `backend` and `precision` choose how an exported file runs.
    `slicing`: SliceSettings to use, or a dict of changes ({"size": 512}) to the `inference.slice`
    saved with the weights, which apply when it is None. `tta` likewise, of `inference.tta`."""
    from detector.inference.slicing import SlicedPredictor, SliceSettings
    from detector.inference.tta import TtaPredictor, TtaSettings

    predictor = _load_unsliced(weights, device, score_thresh, max_detections, overrides, compile, backend, precision)
    saved = predictor.saved_config.get("inference", {})
    if not isinstance(slicing, SliceSettings):
        slicing = SliceSettings.from_config(saved.get("slice", {}), **(slicing or {}))
    if not isinstance(tta, TtaSettings):
        tta = TtaSettings.from_config(saved.get("tta", {}), **(tta or {}))
    predictor = SlicedPredictor(predictor, slicing) if slicing.enabled else predictor
    return TtaPredictor(predictor, tta) if tta.enabled else predictor


def _load_unsliced(weights, device, score_thresh, max_detections, overrides, compile, backend, precision):
    if is_onnx(weights):
        if compile:
            raise ConfigError(f"--compile: {weights} is an ONNX graph, which its runtime optimizes itself; "
                              "--compile applies to PyTorch checkpoints (.pt)")
        from detector.inference.exported import OnnxPredictor

        return OnnxPredictor(weights, score_thresh=score_thresh, max_detections=max_detections, overrides=overrides,
                             backend=backend or "onnxruntime", precision=precision or "f32")
    if backend is not None:
        raise ConfigError(f"--backend {backend}: {weights} is a PyTorch checkpoint, which PyTorch runs; the backend "
                          "chooses the runtime of an exported .onnx (detector export --weights CHECKPOINT)")
    if precision not in (None, "f32"):
        raise ConfigError(f"--precision {precision}: {weights} is a PyTorch checkpoint, run in f32; {precision} is an "
                          "OpenVINO option for an exported .onnx (--backend openvino)")
    from detector.inference.predictor import Predictor

    return Predictor.from_checkpoint(weights, device, score_thresh, max_detections, overrides, compile)
