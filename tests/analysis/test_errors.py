"""TIDE error types on constructed cases with known counts; the oracle AP50 gains checked
against pycocotools run on the explicitly fixed ground truth and detections."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from detector.analysis.detections import from_coco
from detector.analysis.errors import ERROR_TYPES, classify_image, error_breakdown
from coco_cases import CocoCase, pycocotools_ap50

CAT, DOG = 1, 2
BOX = [10, 10, 110, 110]
BOX_90 = [10, 10, 110, 100]  # IoU 0.9 with BOX
BOX_30 = [10, 10, 110, 40]  # IoU 0.3 with BOX
FAR = [400, 300, 450, 350]  # IoU 0 with BOX


class Scenarios:
    """One scenario per image; each remembers how to fix its errors explicitly, by type:
    ("relabel", det, category), ("snap", det, gt annotation), ("drop", det), ("drop_gt", gt)."""

    def __init__(self, seed=0):
        self.case = CocoCase()
        self.fixes = {t: [] for t in ERROR_TYPES}
        self.rng = np.random.default_rng(seed)
        self.expected = {t: 0 for t in ERROR_TYPES}

    def score(self):
        return float(np.round(self.rng.uniform(0.05, 1.0), 6))

    def tp(self):
        image = self.case.image()
        self.case.box(image, BOX, CAT)
        self.case.det(image, BOX, CAT, self.score())

    def cls(self):
        image = self.case.image()
        self.case.box(image, BOX, DOG)
        det = self.case.det(image, BOX, CAT, self.score())
        self.fixes["cls"].append(("relabel", det, DOG))
        self.expected["cls"] += 1

    def two_cls_on_one_box(self):  # only the higher-scoring one is fixed, the other removed
        image = self.case.image()
        self.case.box(image, BOX, DOG)
        high, low = sorted([self.score(), self.score()], reverse=True)
        self.fixes["cls"] += [("relabel", self.case.det(image, BOX, CAT, high), DOG),
                              ("drop", self.case.det(image, BOX_90, CAT, low))]
        self.expected["cls"] += 2

    def loc(self):
        image = self.case.image()
        gt = self.case.box(image, BOX, CAT)
        self.fixes["loc"].append(("snap", self.case.det(image, BOX_30, CAT, self.score()), gt))
        self.expected["loc"] += 1

    def loc_on_found_box(self):  # its box is already matched: the fix removes it
        image = self.case.image()
        self.case.box(image, BOX, CAT)
        high, low = sorted([self.score(), self.score()], reverse=True)
        self.case.det(image, BOX, CAT, high)
        self.fixes["loc"].append(("drop", self.case.det(image, BOX_30, CAT, low)))
        self.expected["loc"] += 1

    def both(self):  # wrong class and badly placed; its box counts as missed
        image = self.case.image()
        gt = self.case.box(image, BOX, DOG)
        self.fixes["both"].append(("drop", self.case.det(image, BOX_30, CAT, self.score())))
        self.fixes["miss"].append(("drop_gt", gt))
        self.expected["both"] += 1
        self.expected["miss"] += 1

    def dupe(self):
        image = self.case.image()
        self.case.box(image, BOX, CAT)
        high, low = sorted([self.score(), self.score()], reverse=True)
        self.case.det(image, BOX, CAT, high)
        self.fixes["dupe"].append(("drop", self.case.det(image, BOX_90, CAT, low)))
        self.expected["dupe"] += 1

    def bkg(self):
        image = self.case.image()
        self.case.box(image, BOX, CAT)
        self.case.det(image, BOX, CAT, self.score())
        self.fixes["bkg"].append(("drop", self.case.det(image, FAR, CAT, self.score())))
        self.expected["bkg"] += 1

    def miss(self):
        image = self.case.image()
        self.fixes["miss"].append(("drop_gt", self.case.box(image, BOX, CAT)))
        self.expected["miss"] += 1

    def fixed_coco(self, error_type):
        """Ground truth and results with every error of `error_type` fixed by hand."""
        gt, results = copy.deepcopy(self.case.gt), copy.deepcopy(self.case.results)
        drop, drop_gt = [], []
        for action, target, *rest in self.fixes[error_type]:
            index = self.case.results.index(target) if action != "drop_gt" else self.case.gt["annotations"].index(target)
            if action == "relabel":
                results[index]["category_id"] = rest[0]
            elif action == "snap":
                results[index]["bbox"] = list(rest[0]["bbox"])
            elif action == "drop":
                drop.append(index)
            else:
                drop_gt.append(index)
        results = [r for i, r in enumerate(results) if i not in drop]
        gt["annotations"] = [a for i, a in enumerate(gt["annotations"]) if i not in drop_gt]
        return gt, results


def build(seed=0) -> Scenarios:
    s = Scenarios(seed)
    plan = ([s.tp] * 4 + [s.cls] * 3 + [s.two_cls_on_one_box] + [s.loc] * 2 + [s.loc_on_found_box]
            + [s.both] * 2 + [s.dupe] * 4 + [s.bkg] * 6 + [s.miss])
    for make in plan:
        make()
    return s


def test_every_error_type_counted_exactly():
    s = build()
    breakdown = error_breakdown(from_coco(s.case.gt, s.case.results))
    assert s.expected == {"cls": 5, "loc": 3, "both": 2, "dupe": 4, "bkg": 6, "miss": 3}
    assert breakdown.counts == s.expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_gains_equal_pycocotools_on_the_fixed_sets(seed):
    s = build(seed)
    breakdown = error_breakdown(from_coco(s.case.gt, s.case.results))
    base = pycocotools_ap50(s.case.gt, s.case.results)
    assert breakdown.ap50 == pytest.approx(base, abs=1e-12)
    for error_type in ERROR_TYPES:
        fixed = pycocotools_ap50(*s.fixed_coco(error_type))
        assert breakdown.delta_ap50[error_type] == pytest.approx(fixed - base, abs=1e-12), error_type
        assert fixed > base  # every type occurs, so every fix helps here
    assert breakdown.to_json()["cls"] == {"count": 5, "dAP50": breakdown.delta_ap50["cls"]}


def test_verdicts_of_one_image():
    case = CocoCase()
    image = case.image()
    case.box(image, BOX, CAT)                           # gt 0: found
    case.box(image, [200, 10, 300, 110], DOG)           # gt 1: a cat on it -> cls
    case.box(image, [10, 200, 110, 300], CAT)           # gt 2: nothing near -> miss
    case.det(image, BOX, CAT, 0.9)                      # TP of gt 0
    case.det(image, BOX_90, CAT, 0.8)                   # dupe of gt 0
    case.det(image, [200, 10, 300, 110], CAT, 0.7)      # cls on gt 1
    case.det(image, FAR, DOG, 0.6)                      # bkg
    verdict = classify_image(from_coco(case.gt, case.results).images[0])
    assert verdict.det_error == [None, "dupe", "cls", "bkg"]
    assert verdict.det_matched_gt.tolist() == [0, -1, -1, -1]
    assert verdict.det_target.tolist() == [-1, -1, 1, -1]
    assert verdict.gt_missed.tolist() == [False, False, True]


def test_loc_comes_before_cls_and_crowd_regions_are_ignored():
    case = CocoCase()
    image = case.image()
    case.box(image, BOX, DOG)
    case.box(image, [10, 60, 110, 110], CAT)            # IoU 0.5 with BOX
    case.box(image, [300, 300, 400, 400], CAT, iscrowd=1)
    case.det(image, BOX, CAT, 0.9)                      # IoU 1 with the dog, 0.5 with the cat: TP of the cat
    case.det(image, [10, 10, 110, 50], CAT, 0.8)        # cat IoU 0 (cat box used? no: IoU 0), dog IoU 0.4 -> both
    case.det(image, [10, 30, 110, 110], CAT, 0.7)       # IoU 0.625 with the (used) cat box, 0.8 with the dog -> cls
    case.det(image, [310, 310, 390, 390], CAT, 0.6)     # inside the crowd region -> ignored
    case.det(image, [310, 310, 390, 390], DOG, 0.5)     # crowd region of another class -> bkg
    verdict = classify_image(from_coco(case.gt, case.results).images[0])
    assert verdict.det_error == [None, "both", "cls", None, "bkg"]
    assert verdict.det_ignored.tolist() == [False, False, False, True, False]
    # The loc test runs first: IoU 0.3 with a box of its own class beats IoU 1 with another class.
    case2 = CocoCase()
    image = case2.image()
    case2.box(image, BOX, DOG)
    case2.box(image, [10, 10, 110, 40], CAT)            # IoU 0.3 with BOX
    case2.det(image, BOX, CAT, 0.9)
    assert classify_image(from_coco(case2.gt, case2.results).images[0]).det_error == ["loc"]


def test_image_without_ground_truth_and_empty_predictions():
    case = CocoCase()
    empty = case.image()
    case.det(empty, BOX, CAT, 0.5)
    alone = case.image()
    case.box(alone, BOX, CAT)
    breakdown = error_breakdown(from_coco(case.gt, case.results))
    assert breakdown.counts == {"cls": 0, "loc": 0, "both": 0, "dupe": 0, "bkg": 1, "miss": 1}
    assert breakdown.ap50 == 0.0
    assert breakdown.fixed_ap50["bkg"] == 0.0  # removing the only detection: nothing found still
    assert breakdown.fixed_ap50["miss"] is None  # no ground truth left: AP undefined, as in COCO
