"""The resize rule, defined once (modeling/geometry.py), gives every backend the same size.

Before, the exported graph computed the scale in doubles that the ONNX exporter turned into
float32, and OpenVINO computes doubles in float32 anyway: 15% of random sizes resized to
another size than the eager model's (392 x 399 -> 256 rows in ONNX Runtime, 255 in PyTorch).
"""
import io
import math
import random

import numpy as np
import pytest
import torch

from detector.errors import DegenerateImageError
from detector.modeling.geometry import check_resizable, padded_size, resized_size


class ResizedSize(torch.nn.Module):
    def forward(self, images):
        shape = torch._shape_as_tensor(images)
        return torch.stack(resized_size(shape[2], shape[3], 256, 384))


def exported() -> bytes:
    file = io.BytesIO()
    torch.onnx.export(ResizedSize(), torch.zeros(1, 1, 392, 399), file, input_names=["images"],
                      dynamic_axes={"images": {2: "height", 3: "width"}}, dynamo=False, opset_version=17)
    return file.getvalue()


def random_sizes(count: int) -> list[tuple[int, int]]:
    rng = random.Random(0)
    return [(392, 399), (427, 640), (1, 1), (1, 500)] + [(rng.randint(1, 1200), rng.randint(1, 1200)) for _ in range(count)]


def test_the_rule_is_the_exact_floor_of_side_times_scale():
    for height, width in random_sizes(2000):
        short, long = min(height, width), max(height, width)
        scale = min(256 / short, 384 / long)
        expected = [math.floor(side * scale) for side in (height, width)]
        # Doubles may land a hair below an exact integer (255.99999999999997): allow only that.
        got = resized_size(height, width, 256, 384)
        for side, value, rough in zip((height, width), got, expected):
            exact_num = side * (256 if 256 * long <= 384 * short else 384)
            exact_den = short if 256 * long <= 384 * short else long
            assert value == exact_num // exact_den
            assert value == rough or (value == rough + 1 and exact_num % exact_den == 0)
    assert resized_size(392, 399, 256, 384) == (256, 260)  # torchvision's doubles: 255 x 260
    assert resized_size(300, 451, 256, 384) == (255, 384)  # the long side caps it


def test_onnx_runtime_gives_the_eager_sizes():
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(exported(), providers=["CPUExecutionProvider"])
    for size in random_sizes(600):
        got = tuple(session.run(None, {"images": np.zeros((1, 1, *size), np.float32)})[0].tolist())
        assert got == resized_size(*size, 256, 384), size


def test_openvino_gives_the_eager_sizes(tmp_path):
    ov = pytest.importorskip("openvino")
    path = tmp_path / "resized_size.onnx"
    path.write_bytes(exported())
    core = ov.Core()
    model = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for size in random_sizes(600):
        got = tuple(np.asarray(model(np.zeros((1, 1, *size), np.float32))[model.outputs[0]]).tolist())
        assert got == resized_size(*size, 256, 384), size


def test_padding_rounds_each_side_up_to_the_divisor():
    assert padded_size(255, 260, 32) == (256, 288)
    assert padded_size(256, 1, 32) == (256, 32)


def test_an_image_that_would_resize_below_one_pixel_is_refused_by_name():
    check_resizable(1, 384, 256, 384)  # 1:384 keeps one row
    with pytest.raises(DegenerateImageError, match=r"strip\.png: 1x2000 px .* resize to 0x384 px"):
        check_resizable(1, 2000, 256, 384, "strip.png")
    with pytest.raises(DegenerateImageError, match="no pixels"):
        check_resizable(0, 10, 256, 384, "empty.png")
