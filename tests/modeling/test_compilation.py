"""`train.compile` / `--compile`: the backbone and RPN head compiled in place, checkpoints unchanged,
the same detections, and clear errors where compiling cannot work."""
import json

import numpy as np
import pytest
import torch

from detector import build_model, load_config
from detector.errors import MissingDependencyError
from detector.cli import main as cli
from detector.inference.predictor import Predictor
from detector.modeling.compilation import compile_model


def small_model():
    torch.manual_seed(0)
    config = load_config(None, ["model.num_classes=2", "model.transform.min_size=160", "model.transform.max_size=192"])
    return build_model(config)


def test_compiles_the_backbone_and_rpn_head_in_place_keeping_every_name():
    model = small_model()
    names = list(model.state_dict())
    assert compile_model(model) is model
    assert model.backbone._compiled_call_impl is not None and model.rpn.head._compiled_call_impl is not None
    assert model.roi_heads.box_head._compiled_call_impl is None  # a different RoI count on every image
    assert list(model.state_dict()) == names  # checkpoints of a compiled run load into a plain model


def test_a_missing_cpp_compiler_is_named_before_the_first_forward():
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "no-such-c++")}):
        with pytest.raises(MissingDependencyError, match=r"--compile: torch.compile on the CPU needs a C\+\+ compiler \(no-such-c\+\+\)"):
            compile_model(small_model(), key="--compile")


def test_compile_applies_to_pytorch_checkpoints_not_onnx(capsys):
    assert cli(["predict", "--weights", "model.onnx", "photo.jpg", "--compile"]) == 2
    assert "--compile: model.onnx is an ONNX graph" in capsys.readouterr().err


def test_the_compiled_predictor_gives_the_eager_detections(real_photos):
    model = small_model()
    eager = Predictor(model, [7, 9], ["cat", "dog"], torch.device("cpu"))
    photo = (real_photos[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    expected = eager.predict([photo])[0]
    compiled = Predictor(model, [7, 9], ["cat", "dog"], torch.device("cpu"), compile=True)
    assert compiled.model.backbone._compiled_call_impl is not None
    got = compiled.predict([photo])[0]
    assert json.dumps(sorted(got)) == json.dumps(sorted(expected)) and len(got["boxes"]) > 0
    assert np.array_equal(got["labels"], expected["labels"])
    np.testing.assert_allclose(got["boxes"], expected["boxes"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-4, atol=1e-5)
