"""The run folder's pictures: training curves, precision-recall curves, images with boxes.

Figures are drawn on matplotlib's Agg canvas through `Figure` (not pyplot), so nothing needs a
display and no global backend or figure state is touched inside a training process.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from detector.errors import InputError, WriteError

# RGB. Saturated and far apart, so they stay apart on photos and after JPEG compression.
PREDICTION_COLOR = (255, 40, 0)
TRUTH_COLOR = (0, 220, 0)

LOSS_COLUMNS = ("loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
AP_COLUMNS = ("AP", "AP50")
# Beyond this many classes a per-class legend hides the plot; the mean curve is always drawn.
MAX_LEGEND_CLASSES = 20


def plot_training_curves(results_csv: str | Path, out_png: str | Path) -> Path:
    """Two panels from results.csv (one row per epoch): the total loss and its four parts, and
    AP/AP50 (empty cells, epochs without evaluation, are skipped). Missing columns are left out."""
    with open(results_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    x_name = "epoch" if rows and "epoch" in rows[0] else "row"
    x = [_float(row.get("epoch", index)) for index, row in enumerate(rows)]

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    loss_axes, ap_axes = figure.subplots(1, 2)
    for column in LOSS_COLUMNS:
        if rows and column in rows[0]:
            loss_axes.plot(x, [_float(row[column]) for row in rows], marker=".",
                           linewidth=2.5 if column == "loss" else 1.2, label=column)
    loss_axes.set(title="training loss", xlabel=x_name, ylabel="loss")
    for column in AP_COLUMNS:
        if rows and column in rows[0]:
            points = [(xi, _float(row[column])) for xi, row in zip(x, rows)]
            points = [(xi, v) for xi, v in points if not math.isnan(v)]
            if points:
                ap_axes.plot(*zip(*points), marker="o", label=column)
    ap_axes.set(title="validation (COCO box AP)", xlabel=x_name, ylabel="AP")
    for axes in (loss_axes, ap_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 1.5
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)
    return save_figure(figure, out_png)


def plot_pr_curves(pr_data: dict[str, Any], class_names: Sequence[str], out_png: str | Path) -> Path:
    """Per-class precision-recall curves: at IoU 0.5 (left) and the mean over IoU 0.5:0.95 (right).

    `pr_data` is `evaluate(...)["pr_curves"]`: {"recall": [R], "precision_50": [K curves or None],
    "precision_50_95": [K curves or None]}, classes in label order as `class_names`. A curve's
    mean is the class's COCO AP (shown in the legend); the thick line is the mean over classes,
    whose AP equals the overall AP50 / AP. Classes without ground truth (None) are left out.
    """
    recall = np.asarray(pr_data["recall"])
    figure = Figure(figsize=(12, 5.5), layout="constrained")
    for axes, key, title in zip(figure.subplots(1, 2), ("precision_50", "precision_50_95"),
                                ("IoU 0.5", "mean over IoU 0.5:0.95")):
        curves = [(name, np.asarray(c)) for name, c in zip(class_names, pr_data[key]) if c is not None]
        show_classes = len(curves) <= MAX_LEGEND_CLASSES
        for name, precision in curves:
            axes.plot(recall, precision, linewidth=1, alpha=0.9 if show_classes else 0.3,
                      label=f"{name} {precision.mean():.3f}" if show_classes else None)
        if curves:
            mean_precision = np.mean([precision for _, precision in curves], axis=0)
            axes.plot(recall, mean_precision, color="black", linewidth=3,
                      label=f"all classes {mean_precision.mean():.3f}")
            axes.legend(loc="lower left", fontsize="small")
        else:
            axes.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=axes.transAxes)
        axes.set(title=f"precision-recall, {title}", xlabel="recall", ylabel="precision",
                 xlim=(0, 1), ylim=(0, 1.02))
        axes.grid(alpha=0.3)
    return save_figure(figure, out_png)


def draw_detections(
    image: np.ndarray,
    pred_boxes: Any,
    pred_scores: Any,
    pred_labels: Any,
    true_boxes: Any,
    true_labels: Any,
    class_names: Sequence[str],
    out_path: str | Path,
    score_thresh: float = 0.5,
) -> Path:
    """Save `image` (H,W,3 uint8 RGB) as JPEG with the boxes of `draw_boxes`."""
    canvas = draw_boxes(image, pred_boxes, pred_scores, pred_labels, true_boxes, true_labels, class_names,
                        score_thresh)
    return write_image(out_path, canvas)


def write_image(path: str | Path, bgr: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write a BGR array (its folder made if needed); a failure is a WriteError naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
        raise WriteError(f"could not write {path} (OpenCV picks the format from the suffix: use .jpg or .png)")
    return path


def draw_boxes(
    image: np.ndarray,
    pred_boxes: Any,
    pred_scores: Any,
    pred_labels: Any,
    true_boxes: Any,
    true_labels: Any,
    class_names: Sequence[str],
    score_thresh: float = 0.5,
) -> np.ndarray:
    """A BGR copy of `image` (H,W,3 uint8 RGB), for OpenCV to write, with ground truth boxes
    (TRUTH_COLOR, class name below the box) and predictions scoring >= `score_thresh`
    (PREDICTION_COLOR, "name score" above the box). Boxes are xyxy pixels of this image; label
    l is named `class_names[l - 1]`."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"draw_boxes wants an H,W,3 uint8 RGB image, got {image.dtype} {image.shape}")
    canvas = np.ascontiguousarray(image[:, :, ::-1])  # OpenCV draws and writes BGR
    height, width = canvas.shape[:2]
    thickness = max(2, round((height + width) / 600))

    pred_boxes = _as_numpy(pred_boxes).reshape(-1, 4)
    pred_scores = _as_numpy(pred_scores).reshape(-1)
    pred_labels = _as_numpy(pred_labels).reshape(-1).astype(int)
    # Truth first, so a prediction on top of it stays visible.
    for box, label in zip(_as_numpy(true_boxes).reshape(-1, 4), _as_numpy(true_labels).reshape(-1).astype(int)):
        draw_box(canvas, box, _name(class_names, label), TRUTH_COLOR, thickness, text_above=False)
    for box, score, label in zip(pred_boxes, pred_scores, pred_labels):
        if score >= score_thresh:
            draw_box(canvas, box, f"{_name(class_names, label)} {score:.2f}", PREDICTION_COLOR, thickness,
                      text_above=True)
    return canvas


def draw_box(canvas: np.ndarray, box: np.ndarray, text: str, rgb: tuple[int, int, int],
              thickness: int, text_above: bool) -> None:
    bgr = rgb[::-1]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), bgr, thickness)
    scale = thickness / 4
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    box_h = text_h + baseline + 2
    # Above the top edge (below the bottom edge for truth), moved inside when it would leave the image.
    top = y1 - box_h if text_above else y2
    top = min(max(top, 0), canvas.shape[0] - box_h)
    cv2.rectangle(canvas, (x1, top), (x1 + text_w + 2, top + box_h), bgr, cv2.FILLED)
    cv2.putText(canvas, text, (x1 + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else f"label {label}"


def save_figure(figure: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return out_png


def _float(value: Any) -> float:
    """A CSV cell as a float; an empty cell (no evaluation that epoch) is NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, maybe on the GPU
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
