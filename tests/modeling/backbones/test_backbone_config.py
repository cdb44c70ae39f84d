"""What the config asks of every backbone: which stages train (`trainable_layers`), which
BatchNorm (`frozen_bn`), and clear errors for what does not exist."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import BackboneConfig
from detector.errors import ConfigError
from detector.modeling.backbones import build_backbone


def lite0(**fields):
    return build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=False, **fields))


def stages_with_gradient(backbone) -> set[str]:
    return {name.split(".")[1] for name, p in backbone.body.named_parameters(prefix="body") if p.requires_grad}


def test_lite0_trainable_layers_count_stages_from_the_top():
    # single map: stem, stage1..stage5 (6 stages); FPN: stem, stage1..stage7 (8)
    assert stages_with_gradient(lite0(trainable_layers=0)) == set()
    assert stages_with_gradient(lite0(trainable_layers=3)) == {"stage3", "stage4", "stage5"}
    assert stages_with_gradient(lite0(trainable_layers=6)) == {"stem", "stage1", "stage2", "stage3", "stage4", "stage5"}
    assert stages_with_gradient(lite0(fpn=True, trainable_layers=2)) == {"stage6", "stage7"}
    assert len(stages_with_gradient(lite0(fpn=True, trainable_layers=8))) == 8
    with pytest.raises(ConfigError, match=r"0\.\.6"):
        lite0(trainable_layers=7)


def test_fpn_always_trains():
    backbone = lite0(fpn=True, trainable_layers=0, fpn_norm=True)
    assert stages_with_gradient(backbone) == set()
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    assert isinstance(backbone.fpn.inner_blocks[0][1], nn.BatchNorm2d)


def test_frozen_batch_norm_keeps_its_statistics_in_train_mode():
    backbone = lite0(frozen_bn=True, trainable_layers=6)
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 1e-3 for m in norms)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not any("bn" in name for name, _ in backbone.named_parameters())  # fixed affine: buffers only


def test_trainable_batch_norm_learns_where_its_stage_trains():
    backbone = lite0(frozen_bn=False, trainable_layers=1)  # only stage5 trains
    assert all(isinstance(m, nn.BatchNorm2d) and (m.eps, m.momentum) == (1e-3, 0.01)
               for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)))
    assert backbone.body.stage5[0].project.bn.weight.requires_grad
    assert not backbone.body.stage4[0].project.bn.weight.requires_grad
    running_mean = backbone.body.stage5[0].project.bn.running_mean.clone()
    backbone.train()(torch.randn(2, 3, 64, 64))
    assert not torch.equal(backbone.body.stage5[0].project.bn.running_mean, running_mean)


def test_torchvision_families_use_torchvisions_batch_norm_choice():
    frozen = build_backbone(BackboneConfig(name="mobilenet_v3_large", fpn=True, pretrained=False, frozen_bn=True))
    assert isinstance(frozen.body["0"][1], FrozenBatchNorm2d) and frozen.body["0"][1].eps == 1e-5
    trainable = build_backbone(BackboneConfig(name="mobilenet_v2", pretrained=False, frozen_bn=False))
    assert type(trainable.body["0"][1]) is nn.BatchNorm2d


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(name="vgg16"), "unknown backbone 'vgg16'"),
        (dict(name="resnet50", fpn=False), "fpn: true only"),
        (dict(name="mobilenet_v3_large", fpn=False), "fpn: true only"),
        (dict(name="mobilenet_v2", trainable_layers=7), r"0\.\.6"),
    ],
)
def test_config_errors_name_the_key(fields, message):
    with pytest.raises(ConfigError, match=message):
        build_backbone(BackboneConfig(pretrained=False, **fields))
