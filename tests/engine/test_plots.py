"""The run folder's pictures are real image files, and boxes are drawn where and in the colour promised."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detector.engine.evaluator import evaluate
from detector.engine.plots import (PREDICTION_COLOR, TRUTH_COLOR, draw_detections, plot_pr_curves,
                                   plot_training_curves)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def read_image(path, magic):
    assert path.read_bytes()[: len(magic)] == magic
    pixels = cv2.imread(str(path))
    assert pixels is not None
    return pixels


def test_training_curves_png_with_epochs_missing_ap(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "epoch,iteration,lr,loss,loss_objectness,loss_rpn_box_reg,loss_classifier,loss_box_reg,AP,AP50,time\n"
        "1,100,0.01,2.0,0.6,0.2,0.8,0.4,,,30.1\n"
        "2,200,0.01,1.5,0.4,0.15,0.6,0.35,0.12,0.30,29.8\n"
        "3,300,0.001,1.2,0.3,0.1,0.5,0.3,,,30.0\n"
        "4,400,0.001,1.1,0.25,0.1,0.45,0.3,0.21,0.45,30.2\n")
    out = plot_training_curves(csv_path, tmp_path / "plots" / "results.png")
    assert out == tmp_path / "plots" / "results.png"
    assert read_image(out, PNG_MAGIC).shape == (450, 1200, 3)


def test_training_curves_from_a_header_only_csv(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,loss,AP,AP50\n")
    assert read_image(plot_training_curves(csv_path, tmp_path / "results.png"), PNG_MAGIC).shape == (450, 1200, 3)


def test_pr_curves_png_from_evaluate_output(tmp_path):
    box = [10, 10, 60, 60]
    truth = [{"file_name": "a.jpg", "width": 100, "height": 100, "boxes": np.array([box, box], np.float32),
              "labels": np.array([1, 2])}]
    preds = [{"boxes": torch.tensor([box, box, [70, 70, 90, 90]], dtype=torch.float32),
              "scores": torch.tensor([0.9, 0.5, 0.8]), "labels": torch.tensor([1, 2, 2])}]
    metrics = evaluate(truth, preds, [(1, "cat"), (2, "dog"), (3, "bird")])  # bird: no GT, left out
    out = plot_pr_curves(metrics["pr_curves"], ["cat", "dog", "bird"], tmp_path / "pr_curves.png")
    pixels = read_image(out, PNG_MAGIC)
    assert pixels.shape == (550, 1200, 3) and pixels.std() > 10  # not a blank canvas


def test_draw_detections_colours_prediction_and_truth_edges(tmp_path):
    image = np.full((240, 320, 3), 128, np.uint8)
    pred_box, truth_box = [40, 60, 140, 180], [180, 50, 290, 200]
    out = draw_detections(image, torch.tensor([pred_box, [0, 0, 30, 30]]), torch.tensor([0.87, 0.1]),
                          torch.tensor([2, 1]), np.array([truth_box]), np.array([1]), ["cat", "dog"],
                          tmp_path / "val" / "image.jpg", score_thresh=0.5)
    drawn = read_image(out, JPEG_MAGIC)[:, :, ::-1].astype(int)  # back to RGB
    assert drawn.shape == (240, 320, 3)

    def colour_at(x, y):
        return drawn[y, x]

    # Middle of the left edges (away from the text labels); JPEG blurs colours a little.
    assert colour_at(40, 120) == pytest.approx(PREDICTION_COLOR, abs=40)
    assert colour_at(140, 120) == pytest.approx(PREDICTION_COLOR, abs=40)
    assert colour_at(180, 125) == pytest.approx(TRUTH_COLOR, abs=40)
    assert colour_at(90, 120) == pytest.approx((128, 128, 128), abs=10)  # inside a box: untouched
    assert colour_at(15, 15) == pytest.approx((128, 128, 128), abs=10)  # score 0.1 < 0.5: not drawn


def test_draw_detections_refuses_a_float_image(tmp_path):
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_detections(np.zeros((10, 10, 3)), [], [], [], [], [], [], tmp_path / "x.jpg")
