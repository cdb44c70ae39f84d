"""ResNet-50-FPN (v1, v2) and MobileNetV3-Large-FPN equal torchvision's detection backbones:
same parameter names, same feature maps for the same weights, same freezing rule.

torchvision.models.detection is the oracle here only; the package never imports it.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, resnet50
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork as TorchvisionFPN

from detector.config import BackboneConfig
from detector.modeling.backbones import build_backbone
from detector.modeling.backbones.fpn import FeaturePyramidNetwork
from detector.modeling.backbones.mobilenet import freeze_mobilenet_stages
from detector.modeling.backbones.resnet import freeze_resnet_stages

# torchvision builder -> our config. Randomly initialised torchvision detectors use BatchNorm2d in
# the body, so ours does too here (frozen_bn=False); the FrozenBatchNorm2d variant is checked below.
CASES = {
    "fasterrcnn_resnet50_fpn": (fasterrcnn_resnet50_fpn, dict(name="resnet50", fpn=True)),
    "fasterrcnn_resnet50_fpn_v2": (fasterrcnn_resnet50_fpn_v2, dict(name="resnet50", fpn=True, fpn_norm=True)),
    "fasterrcnn_mobilenet_v3_large_fpn": (fasterrcnn_mobilenet_v3_large_fpn, dict(name="mobilenet_v3_large", fpn=True)),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        fasterrcnn_mobilenet_v3_large_320_fpn, dict(name="mobilenet_v3_large", fpn=True)
    ),
}
STRIDES = {"resnet50": (4, 8, 16, 32, 64), "mobilenet_v3_large": (32, 32, 64)}


def randomize_batch_norms(module: nn.Module) -> None:
    """Fresh BatchNorms are the identity (mean 0, var 1, weight 1, bias 0) and would hide a
    misplaced or missing norm; give them real-looking statistics and affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("builder_name", list(CASES))
@torch.no_grad()
def test_same_names_and_same_features_as_torchvision(builder_name, real_photo):
    torch.manual_seed(0)
    builder, fields = CASES[builder_name]
    reference = builder(weights=None, weights_backbone=None).backbone.eval()
    randomize_batch_norms(reference)
    ours = build_backbone(BackboneConfig(pretrained=False, frozen_bn=False, trainable_layers=0, **fields)).eval()

    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())  # strict
    expected, features = reference(real_photo), ours(real_photo)

    assert list(features) == list(expected) == ours.featmap_names
    for key in expected:
        torch.testing.assert_close(features[key], expected[key], rtol=1e-5, atol=1e-5)
    assert ours.out_channels == reference.out_channels == 256
    assert ours.strides == STRIDES[fields["name"]]
    assert [real_photo.shape[-1] / f.shape[-1] for f in features.values()] == pytest.approx(
        ours.strides, rel=0.2  # 312 px is not a multiple of the strides: sizes round up
    )


@torch.no_grad()
def test_frozen_batch_norm_variant_loads_the_same_weights(real_photo):
    # torchvision's pretrained fasterrcnn_resnet50_fpn uses FrozenBatchNorm2d; its state dict (or a
    # BatchNorm2d one, whose num_batches_tracked FrozenBatchNorm2d drops) loads and computes the same.
    torch.manual_seed(0)
    reference = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).backbone.eval()
    randomize_batch_norms(reference)
    ours = build_backbone(BackboneConfig(name="mobilenet_v3_large", fpn=True, pretrained=False, frozen_bn=True))
    ours.eval().load_state_dict(reference.state_dict())
    expected, features = reference(real_photo), ours(real_photo)
    for key in expected:
        torch.testing.assert_close(features[key], expected[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", [False, True])
@torch.no_grad()
def test_fpn_equals_torchvisions(norm):
    torch.manual_seed(0)
    channels = [16, 32, 64]
    norm_layer = nn.BatchNorm2d if norm else None
    reference = TorchvisionFPN(channels, 24, norm_layer=norm_layer).eval()
    randomize_batch_norms(reference)
    ours = FeaturePyramidNetwork(channels, 24, norm_layer=norm_layer).eval()
    ours.load_state_dict(reference.state_dict())
    # odd sizes: the top-down path must upsample to each lateral's exact size
    maps = OrderedDict((str(i), torch.randn(2, c, 29 // 2**i, 37 // 2**i)) for i, c in enumerate(channels))
    expected = reference(maps)
    expected["pool"] = nn.functional.max_pool2d(expected[str(len(channels) - 1)], 1, 2)  # LastLevelMaxPool
    features = ours(maps)
    assert list(features) == list(expected) == ["0", "1", "2", "pool"]
    for key in expected:
        torch.testing.assert_close(features[key], expected[key])


def _trainable(named_parameters, skip_prefix="fc") -> set[str]:
    return {name for name, p in named_parameters if p.requires_grad and not name.startswith(skip_prefix)}


def test_resnet_freezing_follows_torchvision():
    resnet = resnet50()
    for k in range(6):
        resnet.requires_grad_(True)
        expected = _trainable(_resnet_fpn_extractor(resnet, k).body.named_parameters())
        resnet.requires_grad_(True)
        freeze_resnet_stages(resnet, k)
        assert _trainable(resnet.named_parameters()) == expected, f"trainable_layers={k}"
    with pytest.raises(ValueError, match="0..5"):
        freeze_resnet_stages(resnet, 6)


@pytest.mark.parametrize("build", [mobilenet_v3_large, mobilenet_v2])
def test_mobilenet_freezing_follows_torchvision(build):
    model = build()
    for k in range(7):
        model.requires_grad_(True)
        expected = _trainable(_mobilenet_extractor(model, True, k).body.named_parameters())
        model.requires_grad_(True)
        freeze_mobilenet_stages(model.features, k, build.__name__)
        assert _trainable(model.features.named_parameters()) == expected, f"trainable_layers={k}"


def test_build_backbone_freezes_the_bottom_stages():
    backbone = build_backbone(BackboneConfig(name="resnet50", fpn=True, pretrained=False, trainable_layers=3))
    stages_with_grad = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert stages_with_grad == {"layer2", "layer3", "layer4"}
    assert all(p.requires_grad for p in backbone.fpn.parameters())
