"""Confusion-matrix cells, per-class precision / recall / F1 and the best-F1 threshold on a
hand-built case, the threshold checked against a brute-force search."""
from __future__ import annotations

import numpy as np
import pytest

from detector.analysis.confusion import confusion_matrix
from detector.analysis.detections import from_coco
from detector.analysis.errors import classify_image
from detector.analysis.operating_point import operating_point
from coco_cases import CocoCase

CAT, DOG = 1, 2
A, B, C = [10, 10, 110, 110], [200, 10, 300, 110], [10, 200, 110, 300]
NEAR_A = [10, 10, 110, 100]  # IoU 0.9 with A
FAR = [400, 300, 450, 350]


def hand_case() -> CocoCase:
    case = CocoCase()
    one = case.image()
    case.box(one, A, CAT)
    case.box(one, B, DOG)
    case.box(one, C, DOG)
    case.det(one, A, CAT, 0.9)       # cat found
    case.det(one, B, CAT, 0.8)       # the dog called a cat
    case.det(one, FAR, DOG, 0.7)     # a dog on nothing
    case.det(one, NEAR_A, CAT, 0.3)  # a duplicate, below 0.5
    two = case.image()
    case.box(two, A, CAT)
    case.det(two, A, CAT, 0.6)
    case.det(two, NEAR_A, CAT, 0.55)  # a duplicate above 0.5
    three = case.image()
    case.box(three, A, CAT)
    case.det(three, A, CAT, 0.45)    # found, but only below 0.5
    return case


def analyse(case):
    evalset = from_coco(case.gt, case.results)
    return evalset, [classify_image(image) for image in evalset.images]


def test_confusion_matrix_cells():
    evalset, verdicts = analyse(hand_case())
    at_half = confusion_matrix(evalset, verdicts, 0.5)
    assert at_half.labels == ["cat", "dog", "background"]
    assert at_half.counts.tolist() == [[2, 0, 1], [1, 0, 1], [1, 1, 0]]
    assert confusion_matrix(evalset, verdicts, 0.2).counts.tolist() == [[3, 0, 0], [1, 0, 1], [2, 1, 0]]
    np.testing.assert_allclose(at_half.normalized("row")[0], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(at_half.normalized("column")[:, 0], [0.5, 0.25, 0.25])
    assert at_half.to_json()["rows"] == "ground truth"


def test_precision_recall_f1_and_worst_images():
    evalset, verdicts = analyse(hand_case())
    point = operating_point(evalset, verdicts, threshold=0.5)
    cat = point.per_class["cat"]
    assert (cat["tp"], cat["fp"], cat["num_gt"]) == (2, 2, 3)
    assert cat["precision"] == pytest.approx(0.5) and cat["recall"] == pytest.approx(2 / 3)
    assert cat["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert point.per_class["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "num_gt": 2}
    worst = point.worst_images(3)
    assert [(w.index, len(w.true_positives), len(w.false_positives), len(w.missed)) for w in worst] == [
        (0, 1, 2, 2), (1, 1, 1, 0), (2, 0, 0, 1)]


def brute_force_best_threshold(case) -> float:
    """Mean F1 over classes, recomputed from scratch by matching only the detections >= t."""
    best, best_f1 = None, -1.0
    for t in sorted({r["score"] for r in case.results}, reverse=True):
        kept = CocoCase()
        kept.gt, kept.results = case.gt, [r for r in case.results if r["score"] >= t]
        evalset, verdicts = analyse(kept)
        f1s = []
        for c in range(evalset.num_classes):
            tp = sum(int((v.det_true_positive & (i.det_classes == c)).sum()) for i, v in zip(evalset.images, verdicts))
            n = sum(int((i.det_classes == c).sum()) for i in evalset.images)
            g = sum(int((i.gt_classes == c).sum()) for i in evalset.images)
            p, r = (tp / n if n else 0.0), tp / g
            f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        if np.mean(f1s) > best_f1 + 1e-12:
            best, best_f1 = t, float(np.mean(f1s))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_best_f1_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    case = CocoCase()
    for _ in range(5):
        image = case.image()
        for _ in range(4):
            x, y = rng.uniform(0, 400, 2)
            box = [x, y, x + 60, y + 60]
            case.box(image, box, int(rng.integers(1, 3)))
            for _ in range(2):
                shift = rng.uniform(-20, 20, 2)
                case.det(image, [box[0] + shift[0], box[1] + shift[1], box[2] + shift[0], box[3] + shift[1]],
                         int(rng.integers(1, 3)), float(rng.random()))
    evalset, verdicts = analyse(case)
    assert operating_point(evalset, verdicts).threshold == brute_force_best_threshold(case)
