"""Labels 1..K -> the dataset's own category ids and names, and one image's detections as the
JSON that predictions.json and `detector serve` write."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def with_categories(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, category_ids: Sequence[int],
                    category_names: Sequence[str]) -> dict:
    """One image's detections, as every predictor returns them: labels 1..K with the dataset's
    own category ids and names beside them."""
    labels = np.asarray(labels, dtype=np.int64)
    return {"boxes": boxes, "scores": scores, "labels": labels,
            "category_ids": [category_ids[label - 1] for label in labels.tolist()],
            "names": [category_names[label - 1] for label in labels.tolist()]}


def to_json(detection: dict, predictor) -> list[dict]:
    """One image's detections with the dataset's own category ids and names (`predictor`'s
    `category_ids` / `category_names`); boxes rounded to 0.01 px, scores to 1e-4."""
    boxes, scores, labels = boxes_scores_labels(detection)
    return [
        {"bbox_xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4),
         "category_id": int(predictor.category_ids[label - 1]), "name": predictor.category_names[label - 1]}
        for box, score, label in zip(boxes, scores, labels.tolist())
    ]


def boxes_scores_labels(detection: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N], labels [N] int64) of a detection dict, tensors or arrays."""
    as_numpy = lambda v: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)  # noqa: E731
    return (as_numpy(detection["boxes"]).reshape(-1, 4), as_numpy(detection["scores"]).reshape(-1),
            as_numpy(detection["labels"]).reshape(-1).astype(np.int64))
