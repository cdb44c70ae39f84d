"""MobileNetV3-Large + FPN (torchvision's fasterrcnn_mobilenet_v3_large_fpn / _320_fpn backbone)
and MobileNetV2 (torchvision's classic "build your own detector" backbone), from torchvision's
classification architectures.

Stages follow torchvision's `_mobilenet_extractor`: `features[0]`, every strided block
(`_is_cn`), and the last layer start a stage. MobileNetV3-Large: features 0, 2, 4, 7, 13, 16;
MobileNetV2: 0, 2, 4, 7, 14, 18; 6 stages each. `trainable_layers=k` trains the features from
the start of the k-th stage from the top onwards.

mobilenet_v3_large, fpn (names and maps equal torchvision's): features[13] (160 ch) and
  features[16] (960 ch), keys "0", "1", plus "pool". Both are at stride 32 (features[13] is the
  strided block itself), pool at 64; anchors ((32, 64, 128, 256, 512),) * 3 as torchvision.
  Its BatchNorm eps is 1e-5, not the classifier's 1e-3: torchvision's detection builder passes
  norm_layer=FrozenBatchNorm2d/BatchNorm2d with their default eps, and its COCO weights expect that.
mobilenet_v2, no fpn: all of `features` (stride 32, 1280 ch), key "0", anchors ((32, 64, 128, 256, 512),).
mobilenet_v2, fpn: the last block of each stride, features[6] / [13] / [18] (strides 8 / 16 / 32;
  32 / 96 / 1280 ch), keys "0".."2", plus "pool" (stride 64); anchors 8x the stride, one per map.
  (torchvision's own default would take features[14] and [18], both at stride 32.)
"""
from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights, mobilenet_v2, mobilenet_v3_large

from detector.config import BackboneConfig
from detector.errors import ConfigError
from detector.modeling.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    IntermediateLayers,
    batch_norm_layer,
    check_trainable_layers,
    freeze,
)
from detector.modeling.backbones.fpn import FeaturePyramidNetwork
from detector.modeling.pretrained import torchvision_state_dict

V3_LARGE_WEIGHTS = MobileNet_V3_Large_Weights.IMAGENET1K_V1  # the one torchvision's detection builders use
V2_WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V1


def stage_starts(features: nn.Sequential) -> list[int]:
    """Index in `features` where each stage starts (torchvision's `stage_indices`)."""
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return [0] + strided + [len(features) - 1]


def freeze_mobilenet_stages(features: nn.Sequential, trainable_layers: int, family: str) -> None:
    starts = stage_starts(features)
    check_trainable_layers(trainable_layers, len(starts), family)
    first_trainable = len(features) if trainable_layers == 0 else starts[len(starts) - trainable_layers]
    freeze(features[:first_trainable])


def _pretrained_features(build, weights, cfg: BackboneConfig) -> nn.Sequential:
    model = build(weights=None, norm_layer=batch_norm_layer(cfg.frozen_bn))
    if cfg.pretrained:
        model.load_state_dict(torchvision_state_dict(weights, cfg.weights))
    return model.features


def _fpn_backbone(features, returned: list[int], strides, anchor_sizes, cfg: BackboneConfig) -> Backbone:
    body = IntermediateLayers(features, {str(index): str(key) for key, index in enumerate(returned)})
    fpn = FeaturePyramidNetwork(
        [features[i].out_channels for i in returned], cfg.fpn_channels, nn.BatchNorm2d if cfg.fpn_norm else None
    )
    return Backbone(
        body,
        cfg.fpn_channels,
        fpn=fpn,
        strides=strides,
        default_anchor_sizes=anchor_sizes,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def build_mobilenet_v3_large_backbone(cfg: BackboneConfig) -> Backbone:
    if not cfg.fpn:
        raise ConfigError(
            "model.backbone: mobilenet_v3_large is available with fpn: true only (torchvision's "
            "mobilenet_v3_large_fpn); for one map use mobilenet_v2 or efficientnet_lite0"
        )
    features = _pretrained_features(mobilenet_v3_large, V3_LARGE_WEIGHTS, cfg)
    freeze_mobilenet_stages(features, cfg.trainable_layers, "mobilenet_v3_large")
    starts = stage_starts(features)
    returned = [starts[-2], starts[-1]]  # torchvision's returned_layers = [num_stages - 2, num_stages - 1]
    return _fpn_backbone(features, returned, (32, 32, 64), ((32, 64, 128, 256, 512),) * 3, cfg)


def build_mobilenet_v2_backbone(cfg: BackboneConfig) -> Backbone:
    features = _pretrained_features(mobilenet_v2, V2_WEIGHTS, cfg)
    freeze_mobilenet_stages(features, cfg.trainable_layers, "mobilenet_v2")
    if cfg.fpn:
        # The block before each strided block ends a stride; 7 -> stride 8 ends at 6, 14 -> 16 ends at 13.
        strided = stage_starts(features)[1:-1]
        returned = [strided[2] - 1, strided[3] - 1, len(features) - 1]
        return _fpn_backbone(features, returned, (8, 16, 32, 64), ((64,), (128,), (256,), (512,)), cfg)
    body = IntermediateLayers(features, {str(len(features) - 1): "0"})
    return Backbone(
        body,
        features[-1].out_channels,
        fpn=None,
        strides=(32,),
        default_anchor_sizes=((32, 64, 128, 256, 512),),  # torchvision's tutorial for this backbone
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
