"""Helpers for the analysis tests: COCO dicts built from xyxy boxes, and pycocotools' AP50 as
the independent oracle."""
from __future__ import annotations

import contextlib
import copy
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


class CocoCase:
    """Ground truth and detections accumulated image by image, as COCO dicts."""

    def __init__(self, categories=CATEGORIES):
        self.gt = {"images": [], "annotations": [], "categories": copy.deepcopy(categories)}
        self.results: list[dict] = []

    def image(self, width=640, height=480, file_name=None) -> int:
        image_id = len(self.gt["images"]) + 1
        self.gt["images"].append({"id": image_id, "file_name": file_name or f"img{image_id}.jpg",
                                  "width": width, "height": height})
        return image_id

    def box(self, image_id, xyxy, category_id, iscrowd=0) -> dict:
        x1, y1, x2, y2 = xyxy
        annotation = {"id": len(self.gt["annotations"]) + 1, "image_id": image_id, "category_id": category_id,
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": iscrowd}
        self.gt["annotations"].append(annotation)
        return annotation

    def det(self, image_id, xyxy, category_id, score) -> dict:
        x1, y1, x2, y2 = xyxy
        result = {"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "score": score}
        self.results.append(result)
        return result


def pycocotools_ap50(gt: dict, results: list[dict]) -> float:
    """pycocotools' AP at IoU 0.5 (area all, 100 detections), -1 where undefined."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1])
