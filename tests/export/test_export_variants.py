"""Feature pyramids, Soft-NMS and Cascade R-CNN export too: Lite0-FPN ranking with gaussian
Soft-NMS, torchvision's MobileNetV3-Large-320-FPN layout (3 maps x 15 anchors, via
torchvision_config) with linear Soft-NMS, and Lite0 with two cascade stages; same detections as PyTorch at batch sizes and sizes other than the export's."""
from pathlib import Path

import numpy as np
import pytest

from detector import load_config, torchvision_config
from detector.config import config_from_dict, config_to_dict, set_dotted
from detector.export.onnx import export_onnx
from detector.inference.exported import OnnxPredictor
from export_helpers import SMALL, as_tensor, assert_same_detections, eager_detections, make_checkpoint, photos, resized

ROOT = Path(__file__).resolve().parents[2]


def lite0_fpn_gaussian():
    return load_config(ROOT / "configs/lite0_fpn.yaml", ["model.num_classes=4", *SMALL, "model.roi_heads.nms_method=gaussian",
                                                         "model.roi_heads.detections_per_img=30"])


def mobilenet_v3_320_fpn_linear():
    data = config_to_dict(torchvision_config("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=4))
    set_dotted(data, "model.roi_heads.nms_method", "linear")
    set_dotted(data, "model.roi_heads.detections_per_img", 30)
    return config_from_dict(data)


def lite0_cascade():
    return load_config(None, ["model.num_classes=4", *SMALL, "model.roi_heads.cascade_ious=[0.6,0.7]",
                              "model.roi_heads.detections_per_img=30"])


@pytest.fixture(scope="module", params=[(lite0_fpn_gaussian, (333, 517)), (mobilenet_v3_320_fpn_linear, (1000, 200)),
                                        (lite0_cascade, (400, 300))],
                ids=lambda p: p[0].__name__)
def exported(request, tmp_path_factory):
    """(ONNX Runtime predictor of the export made at batch 3 and 480x640, eager model, size to test)."""
    make_config, size = request.param
    root = tmp_path_factory.mktemp(make_config.__name__)
    checkpoint, model = make_checkpoint(root / "model.pt", config=make_config(), no_detection_on_black=False)
    return OnnxPredictor(export_onnx(checkpoint, root / "model.onnx", example_batch=3)), model, size


def test_same_detections_as_pytorch(exported):
    predictor, model, size = exported
    images = [resized(photo, size) for photo in photos()[:2]]
    eager = [eager_detections(model, image) for image in images]
    assert sum(len(e["scores"]) for e in eager) >= 5
    for batch_size in (1, 2):
        boxes, scores, labels, counts = predictor.runner(np.stack([as_tensor(i).numpy() for i in images[:batch_size]]))
        assert boxes.shape == (batch_size, 30, 4)
        for index, count in enumerate(counts):
            assert_same_detections(eager[index], {"boxes": boxes[index, :count], "scores": scores[index, :count],
                                                  "labels": labels[index, :count]}, f"{size} batch {batch_size} #{index}")
