"""One score threshold: precision / recall / F1 per class, the F1-vs-score curves, and the
errors of every image there (true positives, false positives, missed boxes).

A detection counts at threshold t when its score is >= t. True positives are those of the
IoU-0.5 matching in score order (errors.py); because higher-scoring detections are matched
first, a detection's verdict is the same at every threshold it passes. The default threshold
is the one of the best F1: the mean over classes with ground truth of each class's F1, the
highest such threshold when several tie. Detections on crowd regions never count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.analysis.detections import EvalSet
from detector.analysis.errors import ImageErrors

CURVE_THRESHOLDS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageAtThreshold:
    """One image's boxes at the threshold: det indices (TP, FP) and ground-truth indices (missed)."""

    index: int  # in EvalSet.images
    true_positives: np.ndarray
    false_positives: np.ndarray
    missed: np.ndarray

    @property
    def num_errors(self) -> int:
        return len(self.false_positives) + len(self.missed)


@dataclass
class OperatingPoint:
    threshold: float
    best_f1_threshold: float
    mean_f1: float
    per_class: dict[str, dict]  # name -> precision, recall, f1, tp, fp, num_gt at the threshold
    curve_f1: np.ndarray  # [K, len(CURVE_THRESHOLDS)], NaN for a class without ground truth
    images: list[ImageAtThreshold]

    def worst_images(self, k: int) -> list[ImageAtThreshold]:
        """The k images with the most errors (false positives + missed), most first; ties in image order."""
        ranked = sorted((image for image in self.images if image.num_errors), key=lambda i: -i.num_errors)
        return ranked[:k]

    def to_json(self) -> dict:
        return {"score_threshold": self.threshold, "best_f1_threshold": self.best_f1_threshold,
                "mean_f1": self.mean_f1, "per_class": self.per_class}


def operating_point(evalset: EvalSet, verdicts: list[ImageErrors], threshold: float | None = None) -> OperatingPoint:
    """Precision, recall and F1 at `threshold` (default: the best mean F1's) and each image's errors."""
    scores, classes, positive = _counted_detections(evalset, verdicts)
    num_gt = np.zeros(evalset.num_classes, np.int64)
    for image in evalset.images:
        np.add.at(num_gt, image.gt_classes, 1)
    best = _best_f1_threshold(scores, classes, positive, num_gt)
    chosen = best if threshold is None else float(threshold)
    tp, count = _counts_at(scores, classes, positive, evalset.num_classes, np.array([chosen]))
    per_class = {}
    for c, name in enumerate(evalset.class_names):
        precision, recall, f1 = _prf(tp[c, 0], count[c, 0], num_gt[c])
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "tp": int(tp[c, 0]),
                           "fp": int(count[c, 0] - tp[c, 0]), "num_gt": int(num_gt[c])}
    curve_tp, curve_count = _counts_at(scores, classes, positive, evalset.num_classes, CURVE_THRESHOLDS)
    curve_f1 = np.array([[_prf(t, n, num_gt[c])[2] if num_gt[c] else np.nan for t, n in zip(curve_tp[c], curve_count[c])]
                         for c in range(evalset.num_classes)]).reshape(evalset.num_classes, -1)
    f1_values = [v["f1"] for v, g in zip(per_class.values(), num_gt) if g > 0]
    images = [_image_at(i, image.det_scores, verdict, chosen) for i, (image, verdict) in
              enumerate(zip(evalset.images, verdicts))]
    return OperatingPoint(chosen, best, float(np.mean(f1_values)) if f1_values else 0.0, per_class, curve_f1, images)


def _counted_detections(evalset: EvalSet, verdicts: list[ImageErrors]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, classes, true positive?) of every detection that counts (crowd regions apart)."""
    scores, classes, positive = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, bool)]
    for image, verdict in zip(evalset.images, verdicts):
        counted = ~verdict.det_ignored
        scores.append(image.det_scores[counted])
        classes.append(image.det_classes[counted])
        positive.append(verdict.det_true_positive[counted])
    return np.concatenate(scores), np.concatenate(classes), np.concatenate(positive)


def _counts_at(scores, classes, positive, num_classes: int, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, T] true positives and detections scoring >= each threshold, per class."""
    tp = np.zeros((num_classes, len(thresholds)), np.int64)
    count = np.zeros_like(tp)
    for c in range(num_classes):
        mine = classes == c
        order = np.argsort(scores[mine])  # ascending
        sorted_scores, sorted_tp = scores[mine][order], positive[mine][order]
        tp_from = np.concatenate([np.cumsum(sorted_tp[::-1])[::-1], [0]])  # TPs at or above each position
        first = np.searchsorted(sorted_scores, thresholds, side="left")
        tp[c], count[c] = tp_from[first], len(sorted_scores) - first
    return tp, count


def _best_f1_threshold(scores, classes, positive, num_gt) -> float:
    """The threshold (a detection score) of the best mean F1 over classes with ground truth."""
    candidates = np.unique(scores)[::-1]  # highest first: argmax keeps the highest of equal F1s
    if not len(candidates) or not (num_gt > 0).any():
        return 0.5
    tp, count = _counts_at(scores, classes, positive, len(num_gt), candidates)
    with_gt = num_gt > 0
    precision = np.divide(tp, count, out=np.zeros(tp.shape), where=count > 0)
    recall = tp / np.maximum(num_gt, 1)[:, None]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(tp.shape), where=precision + recall > 0)
    return float(candidates[int(np.argmax(f1[with_gt].mean(axis=0)))])


def _prf(tp: int, count: int, num_gt: int) -> tuple[float, float, float]:
    precision = tp / count if count else 0.0
    recall = tp / num_gt if num_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def _image_at(index: int, scores: np.ndarray, verdict: ImageErrors, threshold: float) -> ImageAtThreshold:
    counted = (scores >= threshold) & ~verdict.det_ignored
    true_positive = counted & verdict.det_true_positive
    found = np.zeros(len(verdict.gt_matched_by), bool)
    found[verdict.det_matched_gt[true_positive]] = True
    return ImageAtThreshold(index, np.where(true_positive)[0], np.where(counted & ~true_positive)[0], np.where(~found)[0])
