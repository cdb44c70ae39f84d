"""Ground truth and detections per image, read from COCO files (ours or any other library's).

`EvalSet` is what every analysis works on: for each image (sorted by image id, COCOeval's
order) its ground-truth boxes (crowd boxes apart), its detections sorted by score, and classes
as indices 0..K-1 into the ground truth's category list (sorted by category id, COCOeval's
order). COCO's rules are kept so numbers agree with pycocotools: bbox xywh -> xyxy, IoU without
the +1, a crowd (or `ignore`) box is an ignore region, and at most 100 detections per image and
class count (the highest scoring, ties in file order).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detector.errors import AnalysisError

MAX_DETECTIONS_PER_CLASS = 100  # COCOeval's maxDets for AP, applied per image and class


@dataclass
class ImageBoxes:
    """One image: boxes are float64 [N, 4] xyxy pixels, classes int [N] in 0..K-1."""

    image_id: int
    file_name: str
    width: int
    height: int
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    crowd_boxes: np.ndarray
    crowd_classes: np.ndarray
    det_boxes: np.ndarray  # sorted by score, highest first
    det_scores: np.ndarray
    det_classes: np.ndarray


@dataclass
class EvalSet:
    """Every image of an evaluation with its ground truth and detections (see module docstring)."""

    category_ids: list[int]
    class_names: list[str]
    images: list[ImageBoxes] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of xyxy boxes (COCO's: no +1 on widths)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def crowd_iou(dets: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[N, M] COCO's IoU with a crowd region: intersection over the detection's own area."""
    dets, crowd = np.asarray(dets, np.float64).reshape(-1, 4), np.asarray(crowd, np.float64).reshape(-1, 4)
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    inter = _intersection(dets, crowd)
    return np.where(area[:, None] > 0, inter / np.where(area > 0, area, 1)[:, None], 0.0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def load_coco_files(ground_truth: str | Path, predictions: str | Path) -> EvalSet:
    """An EvalSet from a COCO ground-truth file and a COCO results file (a list of
    {"image_id", "category_id", "bbox": [x, y, w, h], "score"})."""
    gt = _read_json(ground_truth)
    if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
        raise AnalysisError(f"{ground_truth}: not a COCO ground-truth file (needs images, annotations, categories)")
    results = _read_json(predictions)
    if isinstance(results, dict) and "annotations" in results:  # a COCO dataset used as results
        results = results["annotations"]
    if not isinstance(results, list):
        raise AnalysisError(f"{predictions}: not a COCO results file (a JSON list of detections)")
    return from_coco(gt, results, source=str(predictions))


def from_coco(gt: dict, results: Sequence[dict], source: str = "predictions") -> EvalSet:
    """An EvalSet from a COCO ground-truth dict and a COCO results list (see load_coco_files)."""
    categories = sorted(gt["categories"], key=lambda c: int(c["id"]))
    category_ids = [int(c["id"]) for c in categories]
    class_of = {cat_id: index for index, cat_id in enumerate(category_ids)}
    images = {int(image["id"]): image for image in gt["images"]}

    gt_by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for annotation in gt["annotations"]:
        image_id, cat_id = int(annotation["image_id"]), int(annotation["category_id"])
        if image_id not in images or cat_id not in class_of:
            raise AnalysisError(f"ground truth annotation {annotation.get('id')}: image {image_id} or category "
                                f"{cat_id} is not in the file's images / categories")
        gt_by_image[image_id].append(annotation)
    dets_by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for index, result in enumerate(results):
        try:
            image_id, cat_id = int(result["image_id"]), int(result["category_id"])
            if len([float(v) for v in result["bbox"]]) != 4 or not np.isfinite(float(result["score"])):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise AnalysisError(f"{source}: detection {index} is not a COCO result "
                                f"{{image_id, category_id, bbox, score}}: {str(result)[:120]}") from None
        if image_id not in images:
            raise AnalysisError(f"{source}: detection {index} is for image id {image_id}, which the ground truth lacks")
        if cat_id not in class_of:
            raise AnalysisError(f"{source}: detection {index} has category id {cat_id}; the ground truth's "
                                f"categories are {category_ids}")
        dets_by_image[image_id].append(result)

    evalset = EvalSet(category_ids, [str(c["name"]) for c in categories])
    for image_id in sorted(images):
        image = images[image_id]
        annotations = gt_by_image[image_id]
        crowd = np.array([bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)) for a in annotations], bool)
        gt_boxes = _xywh_to_xyxy([a["bbox"] for a in annotations])
        gt_classes = np.array([class_of[int(a["category_id"])] for a in annotations], np.int64)
        det_boxes, det_scores, det_classes = _top_detections(dets_by_image[image_id], class_of)
        evalset.images.append(ImageBoxes(
            image_id, str(image.get("file_name", image_id)), int(image.get("width", 0)), int(image.get("height", 0)),
            gt_boxes[~crowd], gt_classes[~crowd], gt_boxes[crowd], gt_classes[crowd],
            det_boxes, det_scores, det_classes,
        ))
    return evalset


def _top_detections(results: list[dict], class_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most MAX_DETECTIONS_PER_CLASS per class (COCOeval's cut), all sorted by score (stable)."""
    scores = np.array([float(r["score"]) for r in results], np.float64)
    classes = np.array([class_of[int(r["category_id"])] for r in results], np.int64)
    order = np.argsort(-scores, kind="mergesort")
    rank_in_class = np.zeros(len(order), np.int64)
    seen: dict[int, int] = {}
    for position, index in enumerate(order):
        rank_in_class[position] = seen.get(int(classes[index]), 0)
        seen[int(classes[index])] = rank_in_class[position] + 1
    keep = order[rank_in_class < MAX_DETECTIONS_PER_CLASS]
    boxes = _xywh_to_xyxy([results[i]["bbox"] for i in keep])
    return boxes, scores[keep], classes[keep]


def _xywh_to_xyxy(boxes: list[Any]) -> np.ndarray:
    xywh = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnalysisError(f"{path}: not valid JSON ({error})") from None
