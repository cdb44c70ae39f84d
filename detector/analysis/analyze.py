"""After training: `detector analyze`, from COCO files or from a checkpoint and a config.

Writes into one folder: analysis.json (AP50, or AP75 with --iou 0.75; the TIDE error breakdown;
the operating point with per-class precision / recall / F1; the confusion matrix; the images
ranked by errors) and the pictures errors.png, confusion_matrix.png, f1_curve.png and
worst_images.jpg.
"""
from __future__ import annotations

import json
from pathlib import Path

from detector.analysis.confusion import confusion_matrix
from detector.analysis.detections import EvalSet, load_coco_files
from detector.analysis.errors import BACKGROUND_IOU, FOREGROUND_IOU, ap_name, check_foreground_iou, error_breakdown
from detector.analysis.galleries import draw_worst_images
from detector.analysis.operating_point import operating_point
from detector.analysis.plots import plot_confusion_matrix, plot_error_breakdown, plot_f1_curves

WORST_IMAGES = 9


def analyze(evalset: EvalSet, out_dir: str | Path, score_threshold: float | None = None,
            worst: int = WORST_IMAGES, image_root: str | Path | None = None, iou: float = FOREGROUND_IOU) -> dict:
    """Every analysis of `evalset`, written to `out_dir`; returns analysis.json's content plus
    "files" (what was written) and "unreadable_images" (gallery images not found). `iou` is the
    foreground IoU a detection needs to be right (TIDE's t_f): the AP and its gains are AP at it,
    named so ("AP75", "dAP75" at 0.75)."""
    check_foreground_iou(iou)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    breakdown = error_breakdown(evalset, fg=iou)
    point = operating_point(evalset, breakdown.images, score_threshold)
    matrix = confusion_matrix(evalset, breakdown.images, point.threshold, iou)
    ranked = sorted((image for image in point.images if image.num_errors), key=lambda i: -i.num_errors)
    result = {
        ap_name(iou): breakdown.ap50,
        "iou_thresholds": {"foreground": iou, "background": BACKGROUND_IOU},
        "errors": breakdown.to_json(),
        "operating_point": point.to_json(),
        "confusion_matrix": matrix.to_json(),
        "images_by_errors": [{"image_id": evalset.images[i.index].image_id, "file_name": evalset.images[i.index].file_name,
                              "fp": len(i.false_positives), "fn": len(i.missed), "tp": len(i.true_positives)}
                             for i in ranked],
    }
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    files = [out_dir / "analysis.json", plot_error_breakdown(breakdown, out_dir / "errors.png"),
             plot_confusion_matrix(matrix, out_dir / "confusion_matrix.png"),
             plot_f1_curves(point, evalset.class_names, out_dir / "f1_curve.png")]
    gallery, unreadable = draw_worst_images(evalset, breakdown, point, worst, out_dir / "worst_images.jpg", image_root)
    if gallery is not None:
        files.append(gallery)
    return {**result, "files": [str(f) for f in files], "unreadable_images": unreadable}


def analyze_files(ground_truth: str | Path, predictions: str | Path, out_dir: str | Path | None = None,
                  **options) -> dict:
    """analyze() of a COCO ground-truth file and a COCO results file. Default `out_dir`: an
    `analysis/` folder beside the ground truth (a run's eval/analysis/); gallery images are
    looked up as named in the file, then under `image_root`."""
    out_dir = Path(out_dir) if out_dir else Path(ground_truth).parent / "analysis"
    return analyze(load_coco_files(ground_truth, predictions), out_dir, **options)


def analyze_checkpoint(config, weights: str | Path, out_dir: str | Path | None = None, overrides=(),
                       backend: str | None = None, precision: str | None = None, slicing=None, tta=None,
                       **options) -> dict:
    """Predict the config's val set with `weights` (a checkpoint with its own model config and
    test-time `model.*` overrides, or an exported .onnx on `backend` at `precision`: loaded as
    `detector eval` loads it), write predictions.json / ground_truth.json with the COCO metrics
    into `out_dir` (default: <output>/eval/analysis), then analyze them. The result's
    "skipped_images" names the val images left out (unreadable, or too thin to resize). `slicing`
    (SliceSettings) predicts sliced; None takes the config's `inference.slice`; `tta`
    (TtaSettings) likewise, of `inference.tta`."""
    from detector.config_checks import check_data_paths
    from detector.data import CategoryMap, load_dataset
    from detector.engine.evaluation import evaluate_model
    from detector.errors import ConfigError
    from detector.inference import load_predictor
    from detector.inference.slicing import SliceSettings
    from detector.inference.tta import TtaSettings

    if config.data.val is None:
        raise ConfigError("data.val is not set: `detector analyze CONFIG --weights W` predicts the val set")
    check_data_paths(config.data)
    if slicing is None:
        slicing = SliceSettings.from_config(config.inference.slice)
    if tta is None:
        tta = TtaSettings.from_config(config.inference.tta)
    check_foreground_iou(options.get("iou", FOREGROUND_IOU))  # before the val set is predicted
    predictor = load_predictor(weights, device=config.train.device, overrides=list(overrides), backend=backend,
                               precision=precision, slicing=slicing, tta=tta)
    categories = CategoryMap(tuple(predictor.category_ids), tuple(predictor.category_names))
    dataset = load_dataset(config.data.val, categories, policy=config.data.policy)
    out_dir = Path(out_dir) if out_dir else Path(config.output) / "eval" / "analysis"
    metrics = evaluate_model(predictor.model, dataset, predictor.device, out_dir, batch_size=config.train.batch_size,
                             workers=config.data.workers, draw=0)
    skipped = [str(p) for p in dataset.report.skipped_images] + metrics["skipped_images"]
    result = analyze_files(out_dir / "ground_truth.json", out_dir / "predictions.json", out_dir, **options)
    return {**result, "skipped_images": skipped}
