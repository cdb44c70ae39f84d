"""COCO's average precision at one IoU threshold, from scored true/false positives.

The arithmetic of pycocotools' `COCOeval.accumulate`, so AP50 here equals pycocotools' AP50 on
the same matching: per class, detections sorted by score (stable, in image order), precision
made monotone from the right, read at the 101 recall points 0, 0.01, ..., 1 (0 beyond the
last recall reached), averaged; the mean over classes that have ground truth. Errors are
"fixed" (errors.py) by editing the points and the ground-truth counts and calling this again.
"""
from __future__ import annotations

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def class_average_precision(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float | None:
    """AP of one class: `scores` and `true_positive` of its detections in image order (ties keep
    that order); None when the class has no ground truth (COCO leaves it out of the mean)."""
    if num_gt <= 0:
        return None
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    tp = np.asarray(true_positive, bool)[order]
    tp_sum = np.cumsum(tp).astype(np.float64)
    fp_sum = np.cumsum(~tp).astype(np.float64)
    recall = tp_sum / num_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: monotone from the right
    indices = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(indices < len(precision), precision[np.minimum(indices, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def mean_average_precision(classes: np.ndarray, scores: np.ndarray, true_positive: np.ndarray,
                           num_gt: np.ndarray) -> float | None:
    """Mean AP over the classes with ground truth. `classes`, `scores`, `true_positive`: one entry
    per detection that counts (ignored ones left out), in image order; `num_gt[c]`: the number
    of ground-truth boxes of class c. None when no class has ground truth."""
    classes = np.asarray(classes, np.int64)
    values = []
    for c, count in enumerate(np.asarray(num_gt)):
        ap = class_average_precision(np.asarray(scores)[classes == c], np.asarray(true_positive)[classes == c], int(count))
        if ap is not None:
            values.append(ap)
    return float(np.mean(values)) if values else None
