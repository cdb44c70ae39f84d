"""Ground truth from any dataset format scores correctly (VOC / YOLO ids are file stems)."""
from types import SimpleNamespace

import numpy as np
import pytest

from detector.data import CategoryMap, ImageRecord
from detector.engine.evaluation import ground_truth_entries
from detector.engine.evaluator import evaluate


def test_string_image_ids_are_numbered_and_score_perfectly():
    records = [
        ImageRecord("2008_000001", "a.jpg", 100, 80, [[10, 10, 50, 60]], [1], [False]),
        ImageRecord("2008_000002", "b.jpg", 100, 80, [[20, 5, 90, 70], [0, 0, 30, 30]], [2, 1], [False, False]),
    ]
    dataset = SimpleNamespace(records=records, category_map=CategoryMap((5, 9), ("cat", "dog")))
    entries = ground_truth_entries(dataset)
    assert [e["image_id"] for e in entries] == [1, 2]
    perfect = [{"boxes": r.boxes, "scores": np.ones(len(r.boxes)), "labels": r.labels} for r in records]
    metrics = evaluate(entries, perfect, [(5, "cat"), (9, "dog")])
    assert metrics["AP"] == 1.0
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_coco_ids_are_kept():
    records = [ImageRecord(42, "a.jpg", 100, 80, [[10, 10, 50, 60]], [1], [False]),
               ImageRecord(7, "b.jpg", 100, 80)]
    entries = ground_truth_entries(SimpleNamespace(records=records))
    assert [e["image_id"] for e in entries] == [42, 7]
