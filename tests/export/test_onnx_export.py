"""`detector export` of the default Lite0 model: one ONNX graph, dynamic batch and image size,
fixed-size padded outputs, the same detections as the PyTorch model on real photos at batch
sizes and image sizes other than the export's (where torchvision's own exports break)."""
import json

import numpy as np
import onnx
import pytest

from detector.export.onnx import signature
from detector.inference.exported import OnnxPredictor
from export_helpers import CATEGORIES, as_tensor, assert_same_detections, eager_detections, photos, resized

# (height, width), batch sizes run: the export was traced at batch 4 and 480x640.
CASES = [((333, 517), (1, 2, 7)), ((1000, 200), (1, 3)), ((448, 224), (2, 1))]


def run(predictor, images):
    """The raw graph outputs of one batch of equal-size uint8 images."""
    batch = np.stack([as_tensor(image).numpy() for image in images])
    return predictor.runner(batch)


def test_one_graph_with_dynamic_batch_and_size_and_the_deployment_metadata(lite0):
    _, onnx_path, predictor, model = lite0
    assert signature(onnx_path) == [
        "input  images          float    [batch, 3, height, width]",
        "output boxes           float    [batch, 100, 4]",
        "output scores          float    [batch, 100]",
        "output labels          int64    [batch, 100]",
        "output num_detections  int64    [batch]",
    ]
    proto = onnx.load(str(onnx_path))
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard op domains {domains}"
    ops = {node.op_type for node in proto.graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "TopK", "Resize"} <= ops
    roi_align = next(node for node in proto.graph.node if node.op_type == "RoiAlign")
    mode = next(a.s.decode() for a in roi_align.attribute if a.name == "coordinate_transformation_mode")
    assert mode == "output_half_pixel"  # torchvision's roi_align(aligned=False), what RoIPooler calls
    meta = {key: json.loads(value) for key, value in predictor.metadata.items()}
    assert meta["category_ids"] == CATEGORIES["ids"] and meta["category_names"] == CATEGORIES["names"]
    assert meta["image_mean"] == pytest.approx([127 / 255] * 3) and meta["image_std"] == pytest.approx([128 / 255] * 3)
    assert (meta["min_size"], meta["max_size"], meta["size_divisible"]) == (256, 384, 32)
    assert (meta["score_thresh"], meta["nms_method"], meta["detections_per_img"]) == (0.05, "hard", 100)
    assert meta["config"]["model"]["num_classes"] == 4


@pytest.mark.parametrize("size, batch_sizes", CASES, ids=[f"{h}x{w}-batch{'+'.join(map(str, b))}" for (h, w), b in CASES])
def test_same_detections_as_pytorch_at_other_batch_sizes_and_image_sizes(lite0, size, batch_sizes):
    _, _, predictor, model = lite0
    images = [resized(photo, size) for photo in photos()[:max(batch_sizes)]]
    eager = [eager_detections(model, image) for image in images]
    assert sum(len(e["scores"]) for e in eager) >= 3, "the test model should detect something on photos"
    for batch_size in batch_sizes:
        boxes, scores, labels, counts = run(predictor, images[:batch_size])
        assert boxes.shape == (batch_size, 100, 4) and scores.shape == labels.shape == (batch_size, 100)
        for index, count in enumerate(counts):
            assert (labels[index, count:] == -1).all() and (scores[index, count:] == 0).all()
            assert (boxes[index, count:] == 0).all() and (labels[index, :count] >= 1).all()
            exported = {"boxes": boxes[index, :count], "scores": scores[index, :count], "labels": labels[index, :count]}
            assert_same_detections(eager[index], exported, f"{size} batch {batch_size} image {index}")


def test_an_image_without_detections_in_a_batch_with_detections(lite0):
    _, _, predictor, model = lite0
    images = [resized(photo, (333, 517)) for photo in photos()[:2]]
    images.insert(1, np.zeros_like(images[0]))
    eager = [eager_detections(model, image) for image in images]
    assert len(eager[1]["scores"]) == 0 and len(eager[0]["scores"]) and len(eager[2]["scores"])
    boxes, scores, labels, counts = run(predictor, images)
    assert counts[1] == 0 and (labels[1] == -1).all()
    for index in (0, 2):
        count = counts[index]
        assert_same_detections(eager[index], {"boxes": boxes[index, :count], "scores": scores[index, :count],
                                              "labels": labels[index, :count]}, f"image {index}")


def test_predictor_api_equals_the_checkpoint_predictor(lite0):
    from detector.inference.predictor import Predictor

    checkpoint, onnx_path, predictor, _ = lite0
    images = [resized(photo, (333, 517)) for photo in photos()[:3]] + [photos()[1]]
    eager = Predictor.from_checkpoint(checkpoint, device="cpu").predict(images, batch_size=1)
    exported = predictor.predict(images, batch_size=4)
    for index, (a, b) in enumerate(zip(eager, exported)):
        assert_same_detections(a, b, f"image {index}")
        assert b["labels"].dtype == np.int64 and set(b) == set(a)
        assert [CATEGORIES["ids"][label - 1] for label in b["labels"]] == b["category_ids"]
    strict = OnnxPredictor(onnx_path, score_thresh=0.5, max_detections=5).predict(images[:1])[0]
    kept = exported[0]["scores"] > 0.5
    assert len(strict["scores"]) == min(5, kept.sum()) and np.array_equal(strict["scores"], exported[0]["scores"][kept][:5])


def test_a_model_the_graph_cannot_represent_is_refused_naming_the_key():
    from detector import build_model, load_config
    from detector.errors import ExportError
    from detector.export.graph import ExportableFasterRCNN

    model = build_model(load_config(None, ["model.backbone.pretrained=false", "model.transform.size_divisible=8"]))
    with pytest.raises(ExportError, match=r"^model.transform.size_divisible=8: the export needs a multiple of the "
                                          r"backbone's largest stride, 16$"):
        ExportableFasterRCNN(model)
