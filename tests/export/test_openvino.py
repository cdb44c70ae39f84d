"""The same exported file in OpenVINO (when it installs): the PyTorch model's detections, at a
batch size and an image size other than the export's, and an image with none in the batch."""
import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install \"detector[openvino]\")")

from detector.export.runtime import OnnxPredictor  # noqa: E402
from export_helpers import as_tensor, assert_same_detections, eager_detections, photos, resized  # noqa: E402


def test_openvino_runs_the_export_with_pytorchs_detections(lite0):
    _, onnx_path, _, model = lite0
    predictor = OnnxPredictor(onnx_path, backend="openvino")
    images = [resized(photo, (333, 517)) for photo in photos()[:2]]
    images.insert(1, np.zeros_like(images[0]))
    boxes, scores, labels, counts = predictor.runner(np.stack([as_tensor(image).numpy() for image in images]))
    assert counts[1] == 0 and (labels[1] == -1).all()
    for index in (0, 2):
        count = counts[index]
        assert_same_detections(eager_detections(model, images[index]),
                               {"boxes": boxes[index, :count], "scores": scores[index, :count],
                                "labels": labels[index, :count]}, f"image {index}")
    portrait = resized(photos()[3], (1000, 200))
    assert_same_detections(eager_detections(model, portrait), predictor.predict([portrait])[0], "1000x200")
