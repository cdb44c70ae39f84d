"""Confusion matrix over the classes plus background, at IoU 0.5 (analyze --iou) and one score threshold.

Rows are the truth, columns the prediction; the last row and column are "background":

  cell [true c, predicted c']   an object of class c found by a detection of class c'
  cell [true c, background]     an object of class c that no detection found (missed)
  cell [background, pred c']    a detection of class c' on no object: a duplicate, a badly
                                placed box or a detection on background
  cell [background, background] always 0 (nothing there, nothing predicted: not counted)

Pairing, among the detections scoring >= the threshold (crowd regions apart): first the
true positives of the IoU-0.5 matching (errors.py: same class, score order), then the
remaining detections and objects pair up class-blind, highest IoU (>= 0.5) first, one to one.
Row-normalised, row c reads "of the objects of class c, this share was predicted as ...";
column-normalised, column c' reads "of the detections of class c', this share was truly ...".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.analysis.detections import EvalSet, box_iou
from detector.analysis.errors import FOREGROUND_IOU, ImageErrors


@dataclass
class ConfusionMatrix:
    labels: list[str]  # the class names, then "background"
    counts: np.ndarray  # [K + 1, K + 1] int, rows truth, columns prediction
    score_threshold: float
    iou_threshold: float

    def normalized(self, axis: str) -> np.ndarray:
        """"row": each row divided by its sum; "column": each column by its sum (0 where empty)."""
        along = 1 if axis == "row" else 0
        sums = self.counts.sum(axis=along, keepdims=True)
        return np.divide(self.counts, sums, out=np.zeros(self.counts.shape), where=sums > 0)

    def to_json(self) -> dict:
        return {"labels": self.labels, "rows": "ground truth", "columns": "prediction",
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "counts": self.counts.tolist()}


def confusion_matrix(evalset: EvalSet, verdicts: list[ImageErrors], score_threshold: float,
                     iou_threshold: float = FOREGROUND_IOU) -> ConfusionMatrix:
    """The confusion matrix of every image at `score_threshold` (see the module docstring)."""
    k = evalset.num_classes
    counts = np.zeros((k + 1, k + 1), np.int64)
    for image, verdict in zip(evalset.images, verdicts):
        counted = (image.det_scores >= score_threshold) & ~verdict.det_ignored
        matched = counted & verdict.det_true_positive
        np.add.at(counts, (image.det_classes[matched], image.det_classes[matched]), 1)
        free_dets = np.where(counted & ~matched)[0]
        taken = np.zeros(len(image.gt_classes), bool)
        taken[verdict.det_matched_gt[matched]] = True
        free_gt = np.where(~taken)[0]
        paired_dets, paired_gt = _pair_by_iou(box_iou(image.det_boxes[free_dets], image.gt_boxes[free_gt]), iou_threshold)
        np.add.at(counts, (image.gt_classes[free_gt[paired_gt]], image.det_classes[free_dets[paired_dets]]), 1)
        lonely_dets = np.delete(free_dets, paired_dets)
        lonely_gt = np.delete(free_gt, paired_gt)
        np.add.at(counts, (np.full(len(lonely_dets), k), image.det_classes[lonely_dets]), 1)
        np.add.at(counts, (image.gt_classes[lonely_gt], np.full(len(lonely_gt), k)), 1)
    return ConfusionMatrix(list(evalset.class_names) + ["background"], counts, float(score_threshold), iou_threshold)


def _pair_by_iou(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (row, column) with IoU >= threshold, the highest IoU first."""
    rows, columns = np.where(iou >= threshold)
    order = np.argsort(-iou[rows, columns], kind="mergesort")
    used_rows, used_columns, pairs = set(), set(), []
    for r, c in zip(rows[order], columns[order]):
        if r not in used_rows and c not in used_columns:
            used_rows.add(r)
            used_columns.add(c)
            pairs.append((r, c))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
