"""The same exported file in OpenVINO (when it installs): the PyTorch model's detections, at a
batch size and an image size other than the export's, and an image with none in the batch.

OpenVINO's own default is bf16 on CPUs with AVX512_BF16 or AMX; ours is f32 on every CPU, and
the test prints the precision that ran (`pytest -s` or the report's captured output), since
a machine without bf16 could not tell the two apart."""
import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install \"detector[openvino]\")")

from detector.inference.exported import OnnxPredictor  # noqa: E402
from export_helpers import as_tensor, assert_same_detections, eager_detections, photos, resized  # noqa: E402


def test_openvino_runs_the_export_with_pytorchs_detections(lite0):
    _, onnx_path, _, model = lite0
    predictor = OnnxPredictor(onnx_path, backend="openvino")
    print(f"OpenVINO ran at {predictor.runner.precision} (CPU capabilities: {cpu_capabilities()})")
    assert predictor.runner.precision == "f32"
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


def cpu_capabilities() -> list[str]:
    import openvino

    return list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_bf16_is_an_explicit_choice_and_says_what_ran(lite0):
    _, onnx_path, _, _ = lite0
    predictor = OnnxPredictor(onnx_path, backend="openvino", precision="bf16")
    expected = "bf16" if "BF16" in cpu_capabilities() else "f32"  # OpenVINO falls back where there is no bf16
    print(f"OpenVINO asked for bf16 ran at {predictor.runner.precision}")
    assert predictor.runner.precision == expected
    image = resized(photos()[0], (333, 517))
    assert len(predictor.predict([image])[0]["boxes"]) > 0


def test_an_unknown_precision_is_refused_by_name(lite0):
    from detector.errors import ExportError

    with pytest.raises(ExportError, match="fp8.*f32, bf16"):
        OnnxPredictor(lite0[1], backend="openvino", precision="fp8")
    with pytest.raises(ExportError, match="OpenVINO option"):
        OnnxPredictor(lite0[1], backend="onnxruntime", precision="bf16")
