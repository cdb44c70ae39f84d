"""The analysis charts: labels.png, anchor_fit.png, errors.png, confusion_matrix.png, f1_curve.png.

Drawn on matplotlib's Agg canvas through `Figure`, as engine/plots.py does (no display, no
global pyplot state inside a training process), and saved with its helper.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from detector.analysis.anchor_fit import MEDIUM_AREA, SMALL_AREA, AnchorFit, ModelBoxes, grid_shapes
from detector.analysis.confusion import ConfusionMatrix
from detector.analysis.errors import ERROR_TYPES, ErrorBreakdown, ap_name
from detector.analysis.operating_point import CURVE_THRESHOLDS, OperatingPoint
from detector.engine.plots import MAX_LEGEND_CLASSES, save_figure

ERROR_NAMES = {"cls": "classification", "loc": "localization", "both": "cls + loc", "dupe": "duplicate",
               "bkg": "background", "miss": "missed"}
MAX_ANNOTATED_CELLS = 20  # confusion matrices with more classes show colours only


def plot_labels(boxes: ModelBoxes, records, class_names: Sequence[str], out_png: str | Path) -> Path:
    """labels.png: boxes per class, box-centre heatmap, width x height and size histogram."""
    figure = Figure(figsize=(12, 10), layout="constrained")
    (counts_axes, centre_axes), (shape_axes, size_axes) = figure.subplots(2, 2)
    counts = [int((boxes.labels == label).sum()) for label in range(1, len(class_names) + 1)]
    bars = counts_axes.bar(range(len(class_names)), counts, color="tab:blue")
    counts_axes.bar_label(bars, fontsize="small")
    counts_axes.set_xticks(range(len(class_names)), class_names, rotation=45 if len(class_names) > 6 else 0, ha="right"
                           if len(class_names) > 6 else "center")
    counts_axes.set(title=f"training boxes per class ({len(boxes.labels)} boxes, {len(records)} images)", ylabel="boxes")

    centres = [((r.boxes[:, 0] + r.boxes[:, 2]) / 2 / r.width, (r.boxes[:, 1] + r.boxes[:, 3]) / 2 / r.height)
               for r in records if len(r.boxes)]
    x = np.concatenate([c[0] for c in centres]) if centres else np.zeros(0)
    y = np.concatenate([c[1] for c in centres]) if centres else np.zeros(0)
    heat, _, _ = np.histogram2d(y, x, bins=40, range=[[0, 1], [0, 1]])
    image = centre_axes.imshow(heat, extent=(0, 1, 1, 0), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=centre_axes, label="boxes")
    centre_axes.set(title="box centres (fraction of the image)", xlabel="x / width", ylabel="y / height")

    wh = boxes.widths_heights
    for label, name in enumerate(class_names, start=1):
        mine = boxes.labels == label
        shape_axes.scatter(wh[mine, 0], wh[mine, 1], s=6, alpha=0.5,
                           label=name if len(class_names) <= MAX_LEGEND_CLASSES else None)
    shape_axes.set(title="box width x height (model pixels, after the resize)", xlabel="width", ylabel="height",
                   xscale="log", yscale="log")
    if len(class_names) <= MAX_LEGEND_CLASSES and len(wh):
        shape_axes.legend(fontsize="small", markerscale=2)

    sides = np.sqrt(wh.prod(1))
    if len(sides):
        size_axes.hist(sides, bins=np.geomspace(max(sides.min(), 1), sides.max() + 1, 40), color="tab:gray")
    for limit, name in ((SMALL_AREA, "small | medium"), (MEDIUM_AREA, "medium | large")):
        size_axes.axvline(np.sqrt(limit), color="tab:red", linestyle="--")
        size_axes.text(np.sqrt(limit), 1, f" {name}", color="tab:red", transform=size_axes.get_xaxis_transform(),
                       va="top", fontsize="small")
    size_axes.set(title="box size sqrt(w x h), model pixels (COCO size classes)", xlabel="pixels", ylabel="boxes",
                  xscale="log")
    for axes in (counts_axes, shape_axes, size_axes):
        axes.grid(alpha=0.3)
    return save_figure(figure, out_png)


def plot_anchor_fit(fit: AnchorFit, out_png: str | Path) -> Path:
    """anchor_fit.png: each box's best anchor IoU (config vs suggested anchors), box shapes with
    the anchor shapes, and the three IoU bins per class."""
    figure = Figure(figsize=(17, 5.5), layout="constrained")
    hist_axes, shape_axes, class_axes = figure.subplots(1, 3)
    fg, bg = fit.fg_iou, fit.bg_iou
    series = [("config", fit.current, fit.best_iou, "tab:blue")]
    if fit.suggested is not None:
        series.append(("suggested", fit.suggested, fit.suggested_best_iou, "tab:orange"))
    for name, _, best, color in series:
        if len(best):
            shares = f"{(best >= fg).mean():.0%} >= {fg:g}, {(best < bg).mean():.0%} < {bg:g}"
            hist_axes.hist(best, bins=np.linspace(0, 1, 41), histtype="step", linewidth=2, color=color,
                           label=f"{name} anchors: {shares}")
    for threshold in (bg, fg):
        hist_axes.axvline(threshold, color="black", linestyle="--", linewidth=1)
    hist_axes.set(title="best anchor IoU of each box", xlabel="IoU with its best anchor", ylabel="boxes", xlim=(0, 1))
    hist_axes.legend(fontsize="small", loc="upper left")

    wh = fit.boxes.widths_heights
    shape_axes.scatter(wh[:, 0], wh[:, 1], s=5, alpha=0.3, color="tab:gray", label="boxes")
    markers = {"config": "x", "suggested": "+"}
    for name, anchors, _, color in series:
        for sizes, ratios in zip(anchors.sizes, anchors.aspect_ratios):
            shapes = grid_shapes(np.asarray(sizes, float), np.asarray(ratios, float))
            shape_axes.scatter(shapes[:, 0], shapes[:, 1], s=120, marker=markers[name], color=color, linewidths=2.5)
        shape_axes.scatter([], [], marker=markers[name], color=color, label=f"{name} anchors")
    shape_axes.set(title="box and anchor shapes (model pixels)", xlabel="width", ylabel="height",
                   xscale="log", yscale="log")
    shape_axes.legend(fontsize="small")

    report = fit.to_json()
    names = list(report["per_class"]) + ["all"]
    rows = list(report["per_class"].values()) + [report["overall"]]
    bins = [(f"iou>={fg:g}", "tab:green"), (f"{bg:g}<=iou<{fg:g}", "tab:olive"), (f"iou<{bg:g}", "tab:red")]
    bottom = np.zeros(len(names))
    for key, color in bins:
        values = np.array([row[key] or 0.0 for row in rows])
        class_axes.bar(range(len(names)), values, bottom=bottom, color=color, label=key)
        bottom += values
    class_axes.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0)
    class_axes.set(title="boxes by best anchor IoU (config anchors)", ylabel="share of boxes", ylim=(0, 1))
    class_axes.legend(fontsize="small", loc="lower right")
    for axes in (hist_axes, shape_axes, class_axes):
        axes.grid(alpha=0.3)
    return save_figure(figure, out_png)


def plot_error_breakdown(breakdown: ErrorBreakdown, out_png: str | Path) -> Path:
    """errors.png: AP50 gained by fixing each error type (TIDE's oracle) and how often it occurs."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    gain_axes, count_axes = figure.subplots(1, 2)
    labels = [ERROR_NAMES[t] for t in ERROR_TYPES]
    gains = [breakdown.delta_ap50[t] or 0.0 for t in ERROR_TYPES]
    colors = ["tab:red", "tab:orange", "tab:purple", "tab:olive", "tab:cyan", "tab:blue"]
    bars = gain_axes.bar(labels, gains, color=colors)
    gain_axes.bar_label(bars, labels=[f"{g:.3f}" for g in gains], fontsize="small")
    ap = "n/a" if breakdown.ap50 is None else f"{breakdown.ap50:.3f}"
    name = ap_name(breakdown.foreground_iou)
    gain_axes.set(title=f"{name} {ap}: gain if one error type were fixed (d{name})", ylabel=f"d{name}")
    bars = count_axes.bar(labels, [breakdown.counts[t] for t in ERROR_TYPES], color=colors)
    count_axes.bar_label(bars, fontsize="small")
    count_axes.set(title="errors of each type (false positives; missed boxes)", ylabel="count")
    for axes in (gain_axes, count_axes):
        axes.tick_params(axis="x", labelrotation=20)
        axes.grid(alpha=0.3, axis="y")
    return save_figure(figure, out_png)


def plot_confusion_matrix(matrix: ConfusionMatrix, out_png: str | Path) -> Path:
    """confusion_matrix.png: row-normalised (recall view) and column-normalised (precision view)."""
    size = len(matrix.labels)
    figure = Figure(figsize=(max(11, 1.3 * size * 2), max(5, 0.65 * size + 1.5)), layout="constrained")
    for axes, axis, title in zip(figure.subplots(1, 2), ("row", "column"),
                                 ("each true class: where its objects went", "each predicted class: what it hit")):
        values = matrix.normalized(axis)
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1)
        if size <= MAX_ANNOTATED_CELLS:
            for r in range(size):
                for c in range(size):
                    if matrix.counts[r, c]:
                        axes.text(c, r, f"{values[r, c]:.2f}\n({matrix.counts[r, c]})", ha="center", va="center",
                                  fontsize="x-small", color="white" if values[r, c] > 0.5 else "black")
        axes.set_xticks(range(size), matrix.labels, rotation=45, ha="right")
        axes.set_yticks(range(size), matrix.labels)
        axes.set(title=f"{title}\n(normalised by {axis}; score >= {matrix.score_threshold:.2f}, IoU >= "
                       f"{matrix.iou_threshold:g})", xlabel="prediction", ylabel="ground truth")
        figure.colorbar(image, ax=axes, shrink=0.8)
    return save_figure(figure, out_png)


def plot_f1_curves(point: OperatingPoint, class_names: Sequence[str], out_png: str | Path) -> Path:
    """f1_curve.png: F1 against the score threshold per class (and their mean), and precision /
    recall / F1 per class at the chosen threshold."""
    figure = Figure(figsize=(13, 5), layout="constrained")
    curve_axes, bar_axes = figure.subplots(1, 2)
    show = len(class_names) <= MAX_LEGEND_CLASSES
    for name, curve in zip(class_names, point.curve_f1):
        if not np.isnan(curve).all():
            curve_axes.plot(CURVE_THRESHOLDS, curve, linewidth=1, alpha=0.9 if show else 0.3, label=name if show else None)
    valid = [c for c in point.curve_f1 if not np.isnan(c).all()]
    if valid:
        curve_axes.plot(CURVE_THRESHOLDS, np.mean(valid, axis=0), color="black", linewidth=3, label="mean")
    curve_axes.axvline(point.threshold, color="tab:red", linestyle="--",
                       label=f"threshold {point.threshold:.3f} (mean F1 {point.mean_f1:.3f})")
    curve_axes.set(title="F1 against the score threshold", xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02))
    curve_axes.legend(fontsize="small")
    positions = np.arange(len(class_names))
    for offset, key, color in ((-0.27, "precision", "tab:blue"), (0, "recall", "tab:orange"), (0.27, "f1", "tab:green")):
        bar_axes.bar(positions + offset, [point.per_class[n][key] for n in class_names], width=0.27, color=color, label=key)
    bar_axes.set_xticks(positions, class_names, rotation=45 if len(class_names) > 6 else 0)
    bar_axes.set(title=f"per class at score >= {point.threshold:.3f}", ylim=(0, 1.05))
    bar_axes.legend(fontsize="small")
    for axes in (curve_axes, bar_axes):
        axes.grid(alpha=0.3)
    return save_figure(figure, out_png)
