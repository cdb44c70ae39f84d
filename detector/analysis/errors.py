"""Why the AP is not 1: every detection error is one TIDE type, with the AP50 its fix would gain.

Definitions of TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020) and of its reference code (`tidecv`), foreground IoU t_f = 0.5, background
IoU t_b = 0.1. A stricter t_f (`detector analyze --iou 0.75`) asks how tight the boxes sit: a
detection right at 0.5 but under 0.75 becomes a loc error, and "AP50" below reads AP at t_f
(AP75, dAP75):

Matching (COCO's, per image): detections in score order each take the unmatched ground-truth
box of their class with the highest IoU >= t_f: a true positive. A detection left unmatched
whose intersection with a crowd / ignore region of its class covers >= t_f of its own area is
ignored (neither right nor wrong), as COCOeval does. At most 100 detections per image and class
count (COCOeval's cut). Every other detection is a false positive of exactly one type, tested
in this order (tidecv's):

  loc   t_b <= IoU < t_f with a box of its own class (the best such box, matched or not)
  cls   IoU >= t_f with a box of another class
  dupe  IoU >= t_f with a box of its class that a higher-scoring detection already matched
  bkg   IoU < t_b with every box of the image (or the image has none)
  both  what is left: t_b <= IoU < t_f with a box of another class only
  miss  (ground truth) a box no detection matched and no cls / loc error points to

(tidecv tests loc with IoU <= t_f and bkg with IoU <= t_b; the half-open intervals above differ
from it only when an IoU equals a threshold exactly.)

The oracle dAP50 of a type is AP50 with every error of that type fixed minus AP50 as it is,
each computed the same way (average_precision.py, COCO's arithmetic); the fixes are tidecv's:

  cls   the detection takes the class of the box it overlaps and becomes a true positive of it
  loc   the detection becomes a true positive of its box
        (cls and loc: only when that box is unmatched, and only the highest-scoring cls or loc
        error pointing at it is fixed; the others pointing at it are removed)
  dupe, bkg, both   the detection is removed
  miss  the box is removed from the ground truth (its class has one positive fewer)

Counts are over all detections the file holds (down to the model's score threshold), as TIDE
counts; operating_point.py looks at one score threshold instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.analysis.average_precision import mean_average_precision
from detector.analysis.detections import EvalSet, ImageBoxes, box_iou, crowd_iou
from detector.errors import InputError

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
FALSE_POSITIVE_TYPES = ("cls", "loc", "both", "dupe", "bkg")
ERROR_TYPES = FALSE_POSITIVE_TYPES + ("miss",)


@dataclass
class ImageErrors:
    """The verdict on every detection and ground-truth box of one image (indices as in ImageBoxes)."""

    det_matched_gt: np.ndarray  # int [D]: the ground-truth box a true positive matched, else -1
    det_ignored: np.ndarray  # bool [D]: on a crowd / ignore region
    det_error: list[str | None]  # [D]: one of FALSE_POSITIVE_TYPES, None for a TP or an ignored one
    det_target: np.ndarray  # int [D]: the box a cls / loc error points to, else -1
    gt_matched_by: np.ndarray  # int [G]: the detection that matched each box, else -1
    gt_missed: np.ndarray  # bool [G]

    @property
    def det_true_positive(self) -> np.ndarray:
        return self.det_matched_gt >= 0


@dataclass
class ErrorBreakdown:
    """Counts and oracle dAP50 of every error type over an EvalSet; `images` in its order."""

    ap50: float | None  # AP at foreground_iou (AP50 by default)
    counts: dict[str, int]
    fixed_ap50: dict[str, float | None]
    images: list[ImageErrors]
    foreground_iou: float = FOREGROUND_IOU

    @property
    def delta_ap50(self) -> dict[str, float | None]:
        return {t: None if self.ap50 is None or v is None else v - self.ap50 for t, v in self.fixed_ap50.items()}

    def to_json(self) -> dict:
        gain = "d" + ap_name(self.foreground_iou)
        return {t: {"count": self.counts[t], gain: self.delta_ap50[t]} for t in ERROR_TYPES}


def ap_name(fg: float) -> str:
    """The name of AP at foreground IoU `fg`, as COCO names it: AP50, AP75."""
    return f"AP{fg * 100:g}"


def check_foreground_iou(fg: float) -> None:
    if not BACKGROUND_IOU < fg <= 1:
        raise InputError(f"--iou {fg}: a foreground IoU in ({BACKGROUND_IOU}, 1] (above the background IoU "
                         f"{BACKGROUND_IOU}), e.g. 0.75")


def classify_image(image: ImageBoxes, fg: float = FOREGROUND_IOU, bg: float = BACKGROUND_IOU) -> ImageErrors:
    """Match one image's detections (sorted by score) and give every false positive its type."""
    num_dets, num_gt = len(image.det_scores), len(image.gt_classes)
    iou = box_iou(image.det_boxes, image.gt_boxes)  # [D, G]
    same_class = image.det_classes[:, None] == image.gt_classes[None, :]
    matched_gt = np.full(num_dets, -1, np.int64)
    matched_by = np.full(num_gt, -1, np.int64)
    for d in range(num_dets):
        candidates = np.where(same_class[d] & (matched_by < 0), iou[d], -1.0)
        if num_gt and candidates.max() >= fg:
            g = int(candidates.argmax())
            matched_gt[d], matched_by[g] = g, d

    ignored = np.zeros(num_dets, bool)
    if len(image.crowd_classes):
        covered = crowd_iou(image.det_boxes, image.crowd_boxes) >= fg
        ignored = (matched_gt < 0) & (covered & (image.det_classes[:, None] == image.crowd_classes[None, :])).any(1)

    errors: list[str | None] = [None] * num_dets
    target = np.full(num_dets, -1, np.int64)
    same_iou, other_iou = iou * same_class, iou * ~same_class
    used_same_iou = same_iou * (matched_by >= 0)[None, :]
    for d in np.where((matched_gt < 0) & ~ignored)[0]:
        if num_gt == 0:
            errors[d] = "bkg"
        elif bg <= same_iou[d].max() < fg:
            errors[d], target[d] = "loc", int(same_iou[d].argmax())
        elif other_iou[d].max() >= fg:
            errors[d], target[d] = "cls", int(other_iou[d].argmax())
        elif used_same_iou[d].max() >= fg:
            errors[d] = "dupe"
        elif iou[d].max() < bg:
            errors[d] = "bkg"
        else:
            errors[d] = "both"

    # A box that a cls / loc error points to could have been found: it is not a "miss".
    explained = np.zeros(num_gt, bool)
    explained[target[target >= 0]] = True
    missed = (matched_by < 0) & ~explained
    return ImageErrors(matched_gt, ignored, errors, target, matched_by, missed)


def error_breakdown(evalset: EvalSet, fg: float = FOREGROUND_IOU, bg: float = BACKGROUND_IOU) -> ErrorBreakdown:
    """TIDE's error counts and oracle AP50 gains over every image (see the module docstring)."""
    images = [classify_image(image, fg, bg) for image in evalset.images]
    counts = {t: sum(image.det_error.count(t) for image in images) for t in FALSE_POSITIVE_TYPES}
    counts["miss"] = int(sum(i.gt_missed.sum() for i in images))
    ap50 = mean_average_precision(*_ap_points(evalset, images, fix=None))
    fixed = {t: mean_average_precision(*_ap_points(evalset, images, fix=t)) for t in ERROR_TYPES}
    return ErrorBreakdown(ap50, counts, fixed, images, fg)


def _ap_points(evalset: EvalSet, verdicts: list[ImageErrors], fix: str | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(classes, scores, true_positive, num_gt) for AP50, with every error of type `fix` fixed."""
    classes, scores, positives = [], [], []
    num_gt = np.zeros(evalset.num_classes, np.int64)
    for image, verdict in zip(evalset.images, verdicts):
        np.add.at(num_gt, image.gt_classes, 1)
        if fix == "miss":
            np.subtract.at(num_gt, image.gt_classes[verdict.gt_missed], 1)
        winners = _fix_winners(image, verdict)
        for d, error in enumerate(verdict.det_error):
            if verdict.det_ignored[d]:
                continue
            cls, positive = int(image.det_classes[d]), bool(verdict.det_matched_gt[d] >= 0)
            if error is not None and error == fix:
                if error not in ("cls", "loc") or winners.get(int(verdict.det_target[d])) != d:
                    continue  # removed
                positive = True
                if error == "cls":
                    cls = int(image.gt_classes[verdict.det_target[d]])
            classes.append(cls)
            scores.append(float(image.det_scores[d]))
            positives.append(positive)
    return np.array(classes, np.int64), np.array(scores), np.array(positives, bool), num_gt


def _fix_winners(image: ImageBoxes, verdict: ImageErrors) -> dict[int, int]:
    """{unmatched box: the highest-scoring cls or loc error pointing at it}: the one a fix turns
    into its true positive (tidecv's BestGTMatch; detections are already sorted by score)."""
    winners: dict[int, int] = {}
    for d, error in enumerate(verdict.det_error):
        g = int(verdict.det_target[d])
        if error in ("cls", "loc") and verdict.gt_matched_by[g] < 0 and g not in winners:
            winners[g] = d
    return winners
