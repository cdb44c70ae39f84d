"""COCO box mAP with pycocotools, computed in memory and written so any COCO tool can re-check it.

Inputs are plain data, so this file knows nothing of dataset readers:

- `ground_truth`: one dict per image, in evaluation order:
  `{"file_name": str, "width": int, "height": int,
    "boxes": [N,4] xyxy pixels, "labels": [N] ints in 1..K, "iscrowd": [N] bools (optional),
    "image_id": int (optional: the dataset's own id; 1, 2, ... by position when absent)}`
- `predictions`: one dict per image, in the same order as `ground_truth` (the model's output,
  boxes in original image pixels): `{"boxes": [M,4] xyxy, "scores": [M], "labels": [M] in 1..K}`
- `categories`: `[(category_id, name), ...]` in label order: label 1 is `categories[0]`.

Arrays may be lists, numpy arrays or torch tensors. Labels are only used inside the model;
everything handed to pycocotools or written to disk carries the dataset's original category ids,
so predictions.json scores the same against the dataset's own annotation file.

COCO conventions kept: boxes become xywh, a GT box's area is w*h (it decides small/medium/large),
a crowd box is ignored (a detection on it is neither a true nor a false positive), at most 100
detections per image count. A number COCO cannot define (no GT at all, or none of that size for
APs/APm/APl, or a class with no GT in the per-class tables) is None (JSON null), never 0 or -1.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.errors import EvaluationError

# Indices into COCOeval.stats, in the order summarize() prints them.
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
# COCO's object sizes (by box area in the original image's pixels) and their AP keys.
SIZES = (("small", "APs"), ("medium", "APm"), ("large", "APl"))


def evaluate(
    ground_truth: Sequence[dict],
    predictions: Sequence[dict],
    categories: Sequence[tuple[int, str]],
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """COCO bbox metrics of `predictions` against `ground_truth` (formats in the module docstring).

    Returns a JSON-safe dict: "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100" (0..1 or None),
    "size_counts" ({"small" | "medium" | "large": {"ground_truth": boxes, "detections": n}}, see
    `size_counts`), "per_class" and "per_class_AP50" ({name: AP or None}), "summary" (pycocotools'
    printed table) and "pr_curves" (for plots.plot_pr_curves, see `precision_recall_curves`).
    With `out_dir`, writes metrics.json (all but pr_curves), predictions.json and ground_truth.json.
    """
    _check_categories(categories)
    coco_gt_dict = ground_truth_to_coco(ground_truth, categories)
    results = predictions_to_coco_results(predictions, coco_gt_dict, categories)

    coco_eval, summary = _run_cocoeval(coco_gt_dict, results)
    metrics: dict[str, Any] = {
        name: _defined_or_none(coco_eval.stats[index]) for name, index in _STATS_INDEX.items()
    }
    metrics["size_counts"] = size_counts(coco_eval, coco_gt_dict, results)
    metrics["per_class"], metrics["per_class_AP50"] = per_class_ap(coco_eval, categories)
    metrics["summary"] = summary

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out_dir / "predictions.json").write_text(json.dumps(results))
        (out_dir / "ground_truth.json").write_text(json.dumps(coco_gt_dict))
    metrics["pr_curves"] = precision_recall_curves(coco_eval, categories)
    return metrics


def ground_truth_to_coco(ground_truth: Sequence[dict], categories: Sequence[tuple[int, str]]) -> dict:
    """The ground truth as a COCO dataset dict (images, annotations, categories), original ids."""
    images, annotations = [], []
    seen_ids = set()
    for index, entry in enumerate(ground_truth):
        image_id = int(entry.get("image_id", index + 1))
        if image_id in seen_ids:
            raise EvaluationError(f"image {index} ({entry.get('file_name')}): image_id {image_id} is used twice")
        seen_ids.add(image_id)
        images.append({"id": image_id, "file_name": str(entry["file_name"]),
                       "width": int(entry["width"]), "height": int(entry["height"])})
        boxes = _as_numpy(entry["boxes"], np.float64).reshape(-1, 4)
        labels = _as_numpy(entry["labels"], np.int64).reshape(-1)
        iscrowd = _as_numpy(entry.get("iscrowd", np.zeros(len(labels))), bool).reshape(-1)
        if not len(boxes) == len(labels) == len(iscrowd):
            raise EvaluationError(f"image {index} ({entry['file_name']}): {len(boxes)} boxes, "
                             f"{len(labels)} labels, {len(iscrowd)} iscrowd flags")
        _check_labels(labels, len(categories), f"ground truth of image {index} ({entry['file_name']})")
        for box, label, crowd in zip(boxes, labels, iscrowd):
            x, y, w, h = _xyxy_to_xywh(box)
            # Ids start at 1: COCOeval takes a match id of 0 for "unmatched".
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(categories[label - 1][0]),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)})
    coco_categories = [{"id": int(cat_id), "name": str(name)} for cat_id, name in categories]
    return {"images": images, "annotations": annotations, "categories": coco_categories}


def predictions_to_coco_results(
    predictions: Sequence[dict], coco_gt_dict: dict, categories: Sequence[tuple[int, str]]
) -> list[dict]:
    """Predictions as a COCO results list: image_id, original category_id, xywh bbox, score."""
    images = coco_gt_dict["images"]
    if len(predictions) != len(images):
        raise EvaluationError(f"{len(predictions)} prediction entries for {len(images)} ground-truth images: "
                         "give one (possibly empty) entry per image, in the same order")
    results = []
    for index, (prediction, image) in enumerate(zip(predictions, images)):
        boxes = _as_numpy(prediction["boxes"], np.float64).reshape(-1, 4)
        scores = _as_numpy(prediction["scores"], np.float64).reshape(-1)
        labels = _as_numpy(prediction["labels"], np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise EvaluationError(f"prediction of image {index} ({image['file_name']}): {len(boxes)} boxes, "
                             f"{len(scores)} scores, {len(labels)} labels")
        _check_labels(labels, len(categories), f"prediction of image {index} ({image['file_name']})")
        for box, score, label in zip(boxes, scores, labels):
            # Rounded once, and the same numbers are evaluated and written, so a re-check agrees exactly.
            results.append({"image_id": image["id"], "category_id": int(categories[label - 1][0]),
                            "bbox": _xyxy_to_xywh(box), "score": round(float(score), 5)})
    return results


def size_counts(coco_eval: COCOeval, coco_gt_dict: dict, results: list[dict]) -> dict[str, dict[str, int]]:
    """Ground-truth boxes (crowd ones left out: they are never scored) and detections in each of
    COCO's sizes, by box area w*h, with pycocotools' own ranges: what APs / APm / APl are computed
    over. Small is [0, 32^2], medium [32^2, 96^2], large [96^2, 1e10], bounds included as
    pycocotools does, so an area of exactly 32^2 or 96^2 counts in both sizes. Every detection
    given counts, whatever its score (COCO scores the 100 best of each image and class)."""
    gt_areas = np.array([a["area"] for a in coco_gt_dict["annotations"] if not a["iscrowd"]], np.float64)
    dt_areas = np.array([r["bbox"][2] * r["bbox"][3] for r in results], np.float64)
    ranges = dict(zip(coco_eval.params.areaRngLbl, coco_eval.params.areaRng))
    counts = {}
    for name, _ in SIZES:
        low, high = ranges[name]
        counts[name] = {"ground_truth": int(((gt_areas >= low) & (gt_areas <= high)).sum()),
                        "detections": int(((dt_areas >= low) & (dt_areas <= high)).sum())}
    return counts


def format_size_table(metrics: dict) -> list[str]:
    """The eval table's AP-by-size rows: AP, ground-truth boxes and detections per COCO size
    (metrics of `evaluate`; an older metrics.json without "size_counts" shows the APs alone)."""
    counts = metrics.get("size_counts") or {}
    lines = [f"{'size':<8} {'AP':>7} {'GT boxes':>9} {'detections':>11}   (box area in original pixels: "
             "small <= 32^2 <= medium <= 96^2 <= large)"]
    for name, key in SIZES:
        value = metrics.get(key)
        ap = f"{value:.4f}" if value is not None else "n/a"
        row = counts.get(name, {})
        lines.append(f"{name:<8} {ap:>7} {row.get('ground_truth', '?'):>9} {row.get('detections', '?'):>11}")
    return lines


def per_class_ap(coco_eval: COCOeval, categories: Sequence[tuple[int, str]]) -> tuple[dict, dict]:
    """({name: AP at IoU 0.5:0.95}, {name: AP at IoU 0.5}), area "all", 100 detections per image.

    The mean of COCOeval's precision over the valid entries (> -1), as summarize() does for
    all classes; None for a class without ground truth (pycocotools leaves it at -1).
    """
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    iou_50 = _iou_index(coco_eval, 0.5)
    ap, ap50 = {}, {}
    for cat_id, name in categories:
        # COCOeval orders classes by sorted id, not by our labels: look the column up by id.
        column = precision[:, :, coco_eval.params.catIds.index(int(cat_id))]
        ap[name] = _valid_mean(column)
        ap50[name] = _valid_mean(column[iou_50])
    return ap, ap50


def precision_recall_curves(coco_eval: COCOeval, categories: Sequence[tuple[int, str]]) -> dict:
    """Per-class interpolated precision at COCO's 101 recall points, area "all", 100 detections.

    {"recall": [101], "precision_50": [K], "precision_50_95": [K]}, classes in label order; each
    class entry is a list of 101 precisions (at IoU 0.5, and the mean over IoU 0.5:0.95), or None
    for a class with no ground truth. The mean of a curve is that class's COCO AP.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    iou_50 = _iou_index(coco_eval, 0.5)
    curves_50, curves_50_95 = [], []
    for cat_id, _ in categories:
        per_iou = precision[:, :, params.catIds.index(int(cat_id))]
        valid = per_iou > -1
        curves_50.append(per_iou[iou_50].tolist() if valid[iou_50].all() else None)
        curves_50_95.append(per_iou.mean(axis=0).tolist() if valid.all() else None)
    return {"recall": params.recThrs.tolist(), "precision_50": curves_50, "precision_50_95": curves_50_95}


def _run_cocoeval(coco_gt_dict: dict, results: list[dict]) -> tuple[COCOeval, str]:
    """COCOeval run on in-memory data, its prints captured; returns it and the summary table."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from_dict(coco_gt_dict)
        if results:
            # loadRes adds fields to the dicts it gets; keep ours clean for predictions.json.
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:
            # loadRes fails on an empty list; no detections is a valid result (AP 0).
            coco_dt = _coco_from_dict({"images": coco_gt_dict["images"], "annotations": [],
                                       "categories": coco_gt_dict["categories"]})
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    return coco_eval, summary.getvalue()


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _check_categories(categories: Sequence[tuple[int, str]]) -> None:
    ids = [int(cat_id) for cat_id, _ in categories]
    names = [name for _, name in categories]
    if not categories or len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise EvaluationError(f"categories must be a non-empty list of (id, name) with unique ids and names, "
                         f"got {list(categories)}")


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    bad = labels[(labels < 1) | (labels > num_classes)]
    if len(bad):
        raise EvaluationError(f"{where}: label {int(bad[0])} is outside 1..{num_classes} "
                         "(labels are contiguous; categories[label - 1] gives the category id)")


def _xyxy_to_xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (round(float(v), 2) for v in box)
    return [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]


def _as_numpy(values: Any, dtype: type) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, maybe on the GPU
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _defined_or_none(value: float) -> float | None:
    # pycocotools writes -1 where a number is undefined (no ground truth in that range).
    return None if value < 0 else float(value)


def _valid_mean(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _iou_index(coco_eval: COCOeval, iou: float) -> int:
    return int(np.argmin(np.abs(coco_eval.params.iouThrs - iou)))
