"""ResNet-50 + FPN: the backbone of torchvision's fasterrcnn_resnet50_fpn (and _v2).

Built from torchvision's classification ResNet-50; names equal torchvision's detection backbone
(`body.conv1.weight`, `body.layer1.0.conv1.weight`, `fpn.inner_blocks.0.0.weight`, ...), so
`backbone.load_state_dict(tv_model.backbone.state_dict())` works.

Maps: layer1..layer4 (strides 4, 8, 16, 32; 256, 512, 1024, 2048 ch) through the FPN, keys
"0".."3", plus "pool" (stride 64), all with `fpn_channels` channels.

  fasterrcnn_resnet50_fpn     frozen_bn=True  (FrozenBatchNorm2d body), fpn_norm=False
  fasterrcnn_resnet50_fpn_v2  frozen_bn=False (BatchNorm2d body),       fpn_norm=True (BatchNorm2d FPN)
Note: torchvision's COCO checkpoint of fasterrcnn_resnet50_fpn expects FrozenBatchNorm2d eps 0.0
(its builder calls overwrite_eps(model, 0.0)); `base.set_frozen_bn_eps` does the same.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import ResNet, ResNet50_Weights, resnet50

from detector.config import BackboneConfig
from detector.errors import ConfigError
from detector.modeling.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    IntermediateLayers,
    batch_norm_layer,
    check_trainable_layers,
)
from detector.modeling.backbones.fpn import FeaturePyramidNetwork
from detector.modeling.pretrained import torchvision_state_dict

IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1  # the one torchvision's detection builders use
# Trainable from the top, torchvision's order: trainable_layers=k trains the first k of these.
STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_resnet_stages(resnet: ResNet, trainable_layers: int) -> None:
    """torchvision's rule: train the top `trainable_layers` stages; the stem's bn1 trains only with conv1 (5)."""
    check_trainable_layers(trainable_layers, len(STAGES_TOP_DOWN), "resnet50")
    trainable = list(STAGES_TOP_DOWN[:trainable_layers])
    if trainable_layers == len(STAGES_TOP_DOWN):
        trainable.append("bn1")
    for name, parameter in resnet.named_parameters():
        if not any(name.startswith(stage) for stage in trainable):
            parameter.requires_grad_(False)


def build_resnet50_backbone(cfg: BackboneConfig) -> Backbone:
    if not cfg.fpn:
        raise ConfigError("model.backbone: resnet50 is available with fpn: true only (torchvision's resnet50_fpn)")
    resnet = resnet50(weights=None, norm_layer=batch_norm_layer(cfg.frozen_bn))
    if cfg.pretrained:
        resnet.load_state_dict(torchvision_state_dict(IMAGENET_WEIGHTS, cfg.weights))
    freeze_resnet_stages(resnet, cfg.trainable_layers)
    body = IntermediateLayers(resnet, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
    fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], cfg.fpn_channels, nn.BatchNorm2d if cfg.fpn_norm else None)
    return Backbone(
        body,
        cfg.fpn_channels,
        fpn=fpn,
        strides=(4, 8, 16, 32, 64),
        default_anchor_sizes=((32,), (64,), (128,), (256,), (512,)),  # torchvision's
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
