"""COCO mAP on hand-made cases whose AP is worked out by hand from COCO's rules: precision is
made monotone from the right (the envelope) and read at 101 recall points 0, 0.01, ..., 1."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.engine.evaluator import evaluate

CATEGORIES = [(1, "raccoon")]


def image(boxes, labels=None, iscrowd=None, file_name="a.jpg", image_id=None, size=(640, 480)):
    entry = {"file_name": file_name, "width": size[0], "height": size[1],
             "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
             "labels": np.array(labels if labels is not None else [1] * len(boxes), dtype=np.int64)}
    if iscrowd is not None:
        entry["iscrowd"] = np.array(iscrowd, dtype=bool)
    if image_id is not None:
        entry["image_id"] = image_id
    return entry


def detections(boxes, scores, labels=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels if labels is not None else [1] * len(scores), dtype=torch.int64)}


BOX = [100, 100, 200, 200]  # 100 x 100: a "large" object (area > 96^2)
FAR_AWAY = [400, 300, 450, 350]  # IoU 0 with BOX


def test_perfect_predictions_give_ap_1():
    truth = [image([BOX, [10, 10, 40, 30]], [1, 1])]
    metrics = evaluate(truth, [detections([BOX, [10, 10, 40, 30]], [0.9, 0.8])], CATEGORIES)
    for name in ("AP", "AP50", "AP75", "APs", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["APm"] is None  # no medium-sized ground truth: undefined, not 0
    assert metrics["per_class"] == {"raccoon": pytest.approx(1.0)}
    assert "Average Precision" in metrics["summary"]


def test_box_at_iou_062_counts_at_050_055_060_only():
    # [100,100,200,162] inside BOX: IoU = 6200 / 10000 = 0.62, a match at 3 of the 10 thresholds.
    metrics = evaluate([image([BOX])], [detections([[100, 100, 200, 162]], [0.9])], CATEGORIES)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(0.3)
    assert metrics["APl"] == pytest.approx(0.3)


def test_false_positive_scored_above_the_true_positive():
    # Ranked: FP (0.9), TP (0.8): precision [0, 1/2], recall [0, 1] -> envelope 1/2 at every recall point.
    metrics = evaluate([image([BOX])], [detections([FAR_AWAY, BOX], [0.9, 0.8])], CATEGORIES)
    assert metrics["AP"] == pytest.approx(0.5)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_precision_envelope_over_101_recall_points():
    # 3 GT; ranked TP, FP, TP, TP: recall 1/3, 1/3, 2/3, 1; precision 1, 1/2, 2/3, 3/4.
    # Envelope: 1 for recall <= 1/3 (34 points 0.00..0.33), 3/4 for the 67 points above.
    truth = [image([[0, 0, 100, 100], [200, 0, 300, 100], [0, 200, 100, 300]])]
    preds = [detections([[0, 0, 100, 100], FAR_AWAY, [200, 0, 300, 100], [0, 200, 100, 300]],
                        [0.9, 0.8, 0.7, 0.6])]
    metrics = evaluate(truth, preds, CATEGORIES)
    assert metrics["AP"] == pytest.approx((34 * 1 + 67 * 0.75) / 101)
    curve = metrics["pr_curves"]["precision_50"][0]
    assert curve[:34] == pytest.approx([1.0] * 34) and curve[34:] == pytest.approx([0.75] * 67)


def test_detection_on_an_image_without_ground_truth_is_a_false_positive():
    truth = [image([BOX], file_name="a.jpg"), image([], file_name="empty.jpg")]
    preds = [detections([BOX], [0.8]), detections([BOX], [0.9])]
    assert evaluate(truth, preds, CATEGORIES)["AP"] == pytest.approx(0.5)  # as FP-above-TP


def test_detection_on_a_crowd_region_is_neither_true_nor_false_positive():
    # The crowd box is not a GT to find, and the high-scoring detection inside it is ignored
    # (crowd IoU = intersection / detection area = 1). Treated as a normal GT this would give 0.2525.
    truth = [image([BOX, [300, 200, 600, 450]], iscrowd=[False, True])]
    preds = [detections([[320, 220, 360, 260], BOX], [0.95, 0.9])]
    metrics = evaluate(truth, preds, CATEGORIES)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)


def test_no_predictions_at_all_gives_zeros():
    truth = [image([BOX]), image([], file_name="b.jpg")]
    metrics = evaluate(truth, [detections([], []), detections([], [])], CATEGORIES)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0
    assert metrics["APs"] is None  # still undefined where no ground truth exists
    assert metrics["per_class"] == {"raccoon": 0.0}


def test_no_ground_truth_at_all_is_undefined_not_zero():
    metrics = evaluate([image([])], [detections([BOX], [0.9])], CATEGORIES)
    assert metrics["AP"] is None and metrics["per_class"] == {"raccoon": None}


def test_unsorted_category_ids_round_trip_and_per_class_table(tmp_path):
    # Label order (cat, dog, bird) differs from id order (3, 7, 42): a mix-up would swap classes.
    categories = [(42, "cat"), (3, "dog"), (7, "bird")]
    truth = [image([BOX, [300, 200, 400, 300]], [1, 2], image_id=17),
             image([[10, 10, 110, 110]], [1], file_name="b.jpg", image_id=5)]
    preds = [detections([BOX, [300, 200, 400, 300], FAR_AWAY], [0.9, 0.4, 0.8], [1, 1, 2]),
             detections([[10, 10, 110, 110]], [0.7], [1])]
    metrics = evaluate(truth, preds, categories, out_dir=tmp_path)

    # cat: 2 GT, found both, never outscored by a FP -> 1. dog: 1 GT, only a FP -> 0. bird: no GT.
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": 0.0, "bird": None}
    assert metrics["AP"] == pytest.approx(0.5)  # mean over the classes with ground truth
    assert metrics["pr_curves"]["precision_50"][2] is None

    written = json.loads((tmp_path / "predictions.json").read_text())
    assert [(p["image_id"], p["category_id"], p["bbox"], p["score"]) for p in written] == [
        (17, 42, [100, 100, 100, 100], 0.9), (17, 42, [300, 200, 100, 100], 0.4),
        (17, 3, [400, 300, 50, 50], 0.8), (5, 42, [10, 10, 100, 100], 0.7)]
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert [(i["id"], i["file_name"]) for i in gt["images"]] == [(17, "a.jpg"), (5, "b.jpg")]
    assert gt["categories"] == [{"id": 42, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
    assert json.loads((tmp_path / "metrics.json").read_text())["per_class"]["bird"] is None


def test_written_files_rescore_the_same_with_plain_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    categories = [(5, "a"), (2, "b")]
    truth, preds = [], []
    for index in range(6):
        xy = rng.uniform(0, 300, (4, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 150, (4, 2))], axis=1)
        labels = rng.integers(1, 3, 4)
        truth.append(image(boxes, labels, iscrowd=[False, False, False, index == 2], file_name=f"{index}.jpg"))
        noisy = boxes + rng.normal(0, 6, boxes.shape)
        preds.append(detections(noisy.tolist(), rng.uniform(0.05, 1, 4).tolist(), labels.tolist()))
    metrics = evaluate(truth, preds, categories, out_dir=tmp_path)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "ground_truth.json"))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "predictions.json")), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert 0.1 < metrics["AP"] < 0.95  # a case where mix-ups would show
    assert metrics["AP"] == coco_eval.stats[0]
    assert metrics["AP50"] == coco_eval.stats[1]
    assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == metrics["AP"]


def test_labels_outside_1_to_k_are_refused_with_the_image_named():
    with pytest.raises(ValueError, match=r"prediction of image 0 \(a.jpg\): label 2 is outside 1..1"):
        evaluate([image([BOX])], [detections([BOX], [0.9], [2])], CATEGORIES)


def test_ap_by_size_comes_with_the_ground_truth_and_detections_of_each_size(tmp_path):
    from detector.engine.evaluator import format_size_table

    small, edge_small, medium, large = [10, 10, 20, 20], [0, 0, 31, 33], [50, 50, 90, 90], [100, 100, 200, 200]
    # Areas: 100 and 1023 (small), 40 x 40 (medium), 100 x 100 (large).
    crowd = [300, 300, 305, 305]  # crowd boxes are never scored, so never counted
    truth = [image([small, edge_small, medium, large, crowd], iscrowd=[0, 0, 0, 0, 1])]
    # Both small objects found, the medium one missed, the large one found, plus two small false positives.
    found = detections([small, edge_small, large, [400, 400, 410, 410], [420, 420, 425, 430]], [0.9, 0.8, 0.7, 0.6, 0.5])
    metrics = evaluate(truth, [found], CATEGORIES, tmp_path)
    assert metrics["size_counts"] == {"small": {"ground_truth": 2, "detections": 4},
                                      "medium": {"ground_truth": 1, "detections": 0},
                                      "large": {"ground_truth": 1, "detections": 1}}
    # Small: the two true detections score above the two false ones: AP 1. Medium: none found.
    assert metrics["APs"] == pytest.approx(1.0) and metrics["APm"] == 0.0 and metrics["APl"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "metrics.json").read_text())["size_counts"] == metrics["size_counts"]
    table = format_size_table(metrics)
    assert table[1].split() == ["small", "1.0000", "2", "4"]
    assert table[2].split() == ["medium", "0.0000", "1", "0"]
    assert table[3].split() == ["large", "1.0000", "1", "1"]
    # A size without ground truth: AP undefined, its detections still counted.
    metrics = evaluate([image([large])], [detections([large, small], [0.9, 0.8])], CATEGORIES)
    assert metrics["APs"] is None and metrics["size_counts"]["small"] == {"ground_truth": 0, "detections": 1}
    assert format_size_table(metrics)[1].split() == ["small", "n/a", "0", "1"]
    # An older metrics.json, without the counts, still prints.
    assert format_size_table({"APs": 0.5, "APm": None, "APl": 0.25})[1].split() == ["small", "0.5000", "?", "?"]


def test_an_area_of_exactly_32_squared_counts_as_small_and_medium_as_pycocotools_scores_it():
    edge = [0, 0, 32, 32]
    metrics = evaluate([image([edge])], [detections([], [])], CATEGORIES)
    assert metrics["size_counts"]["small"]["ground_truth"] == metrics["size_counts"]["medium"]["ground_truth"] == 1
    assert metrics["APs"] == metrics["APm"] == 0.0  # scored in both: defined, and missed
