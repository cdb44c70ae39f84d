"""AP50 from our matching and COCO's arithmetic equals pycocotools' on random sets, crowd regions
and the 100-detections cut included; IoU equals torchvision's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as torchvision_box_iou

from detector.analysis.average_precision import class_average_precision
from detector.analysis.detections import box_iou, from_coco
from detector.analysis.errors import error_breakdown
from coco_cases import CocoCase, pycocotools_ap50


def random_case(seed: int) -> CocoCase:
    rng = np.random.default_rng(seed)
    case = CocoCase()
    for _ in range(8):
        image = case.image()
        objects = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(10, 120, 2)
            box = [x, y, x + w, y + h]
            case.box(image, box, int(rng.integers(1, 3)), iscrowd=int(rng.random() < 0.1))
            objects.append(box)
        # Detections near the objects (jittered, some with the wrong class) and random ones.
        for box in objects * 3:
            x1, y1, x2, y2 = np.array(box) + rng.normal(0, 8, 4)
            if x2 > x1 and y2 > y1:
                case.det(image, [x1, y1, x2, y2], int(rng.integers(1, 3)), float(rng.random()))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 500, 2)
            case.det(image, [x, y, x + 40, y + 30], int(rng.integers(1, 3)), float(rng.random()))
    crowded = case.image()  # more than 100 detections of one class: COCO counts the best 100
    case.box(crowded, [0, 0, 50, 50], 1)
    for k in range(130):
        case.det(crowded, [k, 0, k + 50, 50], 1, float(rng.random()))
    return case


@pytest.mark.parametrize("seed", range(4))
def test_ap50_equals_pycocotools(seed):
    case = random_case(seed)
    assert error_breakdown(from_coco(case.gt, case.results)).ap50 == pytest.approx(
        pycocotools_ap50(case.gt, case.results), abs=1e-12)


def test_hand_computed_ap():
    # TP, FP, TP of 3 boxes: recall 1/3 at precision 1, 2/3 at 2/3 (envelope), never 1.
    ap = class_average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    points = np.linspace(0, 1, 101)
    expected = np.where(points <= 1 / 3, 1.0, np.where(points <= 2 / 3, 2 / 3, 0.0)).mean()
    assert ap == pytest.approx(expected)
    assert class_average_precision(np.array([]), np.array([], bool), 2) == 0.0
    assert class_average_precision(np.array([0.5]), np.array([False]), 0) is None


def test_iou_equals_torchvision():
    rng = np.random.default_rng(0)
    a = np.concatenate([xy := rng.uniform(0, 100, (20, 2)), xy + rng.uniform(1, 50, (20, 2))], 1)
    b = np.concatenate([xy := rng.uniform(0, 100, (15, 2)), xy + rng.uniform(1, 50, (15, 2))], 1)
    expected = torchvision_box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-12)
