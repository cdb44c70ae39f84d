"""The INT8 export's accuracy gate: COCO AP of an exported file on a config's val set, scored by
the code `detector eval` scores it with (the same numbers `detector eval --weights F.onnx` prints)."""
from __future__ import annotations

from pathlib import Path

import torch


def val_dataset(config, weights: Path):
    """The val set of `config`, labelled with the classes of checkpoint `weights`."""
    from detector.config_checks import check_data_paths
    from detector.data import CategoryMap, load_dataset
    from detector.engine.checkpoint import load_checkpoint

    check_data_paths(config.data)
    categories = CategoryMap.from_dict(load_checkpoint(weights)["categories"])
    return load_dataset(config.data.val, categories, policy=config.data.policy)


def evaluate_file(path: Path, dataset, out_dir: Path, config, backend: str = "onnxruntime",
                  precision: str = "f32") -> dict[str, float]:
    """{"AP", "AP50"} of the exported file `path` (ONNX Runtime unless `backend`) on `dataset`; a
    val set without ground truth scores 0."""
    from detector.engine.evaluation import evaluate_model
    from detector.inference.exported import OnnxPredictor

    predictor = OnnxPredictor(path, backend=backend, precision=precision)
    metrics = evaluate_model(predictor.model, dataset, torch.device("cpu"), out_dir, batch_size=config.train.batch_size,
                             workers=0)
    return {key: float(metrics[key] or 0.0) for key in ("AP", "AP50")}
