"""Backbones: a pretrained CNN (+ optional FPN) turning a normalized image batch into feature maps.

`build_backbone(cfg)` returns a `Backbone`: `forward(x[B,3,H,W]) -> OrderedDict[str, Tensor]`
with attributes out_channels, featmap_names, strides, default_anchor_sizes, image_mean, image_std.

  name                 fpn    maps (key: stride)                         out_channels
  efficientnet_lite0   no     0:16                                       112
  efficientnet_lite0   yes    0:8 1:16 2:32 pool:64                      fpn_channels
  resnet50             yes    0:4 1:8 2:16 3:32 pool:64                  fpn_channels
  mobilenet_v3_large   yes    0:32 1:32 pool:64 (torchvision's)          fpn_channels
  mobilenet_v2         no     0:32                                       1280
  mobilenet_v2         yes    0:8 1:16 2:32 pool:64                      fpn_channels
"""
from __future__ import annotations

from typing import Callable

from detector import choices
from detector.choices import spell
from detector.config import BackboneConfig
from detector.errors import ConfigError
from detector.modeling.backbones.base import Backbone
from detector.modeling.backbones.efficientnet_lite import build_efficientnet_lite0_backbone
from detector.modeling.backbones.mobilenet import build_mobilenet_v2_backbone, build_mobilenet_v3_large_backbone
from detector.modeling.backbones.resnet import build_resnet50_backbone

# One builder per name in choices.BACKBONES (a test checks they agree).
BUILDERS: dict[str, Callable[[BackboneConfig], Backbone]] = {
    "efficientnet_lite0": build_efficientnet_lite0_backbone,
    "resnet50": build_resnet50_backbone,
    "mobilenet_v3_large": build_mobilenet_v3_large_backbone,
    "mobilenet_v2": build_mobilenet_v2_backbone,
}


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """The backbone `cfg` describes, with its pretrained weights loaded when `cfg.pretrained`."""
    if cfg.name not in BUILDERS:
        raise ConfigError(f"model.backbone.name: unknown backbone {cfg.name!r}; choose {spell(choices.BACKBONES)}")
    return BUILDERS[cfg.name](cfg)


__all__ = ["BUILDERS", "Backbone", "build_backbone"]
