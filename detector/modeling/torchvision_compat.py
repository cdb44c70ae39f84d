"""Our model from torchvision's Faster R-CNN weights.

`from_torchvision(name, state_dict)` builds the model torchvision's builder `name` builds (same
backbone, anchors, heads and defaults) and loads its weights: our modules carry torchvision's
parameter names, so its COCO checkpoints (e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth, 37.0 box
AP) load as they are, offline, and give the same detections.
"""
from __future__ import annotations

from torch import Tensor

from detector.config import AnchorConfig, BackboneConfig, Config, ModelConfig, ROIHeadsConfig, RPNConfig, TransformConfig
from detector.errors import CheckpointError, ConfigError
from detector.modeling.backbones.base import set_frozen_bn_eps
from detector.modeling.faster_rcnn import FasterRCNN, build_model
from detector.modeling.weights import load_matching_weights

_RATIOS = [0.5, 1.0, 2.0]


def torchvision_config(name: str, num_classes: int = 90) -> Config:
    """The config equal to torchvision's builder `name` (num_classes without background: COCO's 90 ids)."""
    fpn_anchors = AnchorConfig(sizes=[[32.0], [64.0], [128.0], [256.0], [512.0]], aspect_ratios=[_RATIOS] * 5)
    mobile_anchors = AnchorConfig(sizes=[[32.0, 64.0, 128.0, 256.0, 512.0]] * 3, aspect_ratios=[_RATIOS] * 3)
    transform = TransformConfig(min_size=800, max_size=1333)
    if name == "fasterrcnn_resnet50_fpn":
        model = ModelConfig(
            backbone=BackboneConfig(name="resnet50", fpn=True, pretrained=False, frozen_bn=True),
            anchors=fpn_anchors,
        )
    elif name == "fasterrcnn_resnet50_fpn_v2":
        model = ModelConfig(
            backbone=BackboneConfig(name="resnet50", fpn=True, pretrained=False, frozen_bn=False, fpn_norm=True),
            anchors=fpn_anchors,
            rpn=RPNConfig(conv_depth=2),
            roi_heads=ROIHeadsConfig(head="conv", conv_layers=[256, 256, 256, 256], conv_norm=True),
        )
    elif name == "fasterrcnn_mobilenet_v3_large_fpn":
        model = ModelConfig(
            backbone=BackboneConfig(name="mobilenet_v3_large", fpn=True, pretrained=False, frozen_bn=True),
            anchors=mobile_anchors,
            rpn=RPNConfig(score_thresh=0.05),
        )
    elif name == "fasterrcnn_mobilenet_v3_large_320_fpn":
        transform = TransformConfig(min_size=320, max_size=640)
        model = ModelConfig(
            backbone=BackboneConfig(name="mobilenet_v3_large", fpn=True, pretrained=False, frozen_bn=True),
            anchors=mobile_anchors,
            rpn=RPNConfig(score_thresh=0.05, pre_nms_top_n_test=150, post_nms_top_n_test=150),
        )
    else:
        raise ConfigError(f"from_torchvision: unknown model {name!r}; supported: {', '.join(SUPPORTED)}")
    model.transform = transform
    model.num_classes = num_classes
    return Config(model=model)


SUPPORTED = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


def from_torchvision(name: str, state_dict: dict[str, Tensor]) -> FasterRCNN:
    """Our model, in eval mode, holding the weights of torchvision's `name` model."""
    if "roi_heads.box_predictor.cls_score.weight" not in state_dict:
        raise CheckpointError(
            f"from_torchvision({name!r}): the state dict has no roi_heads.box_predictor.cls_score.weight; "
            "pass torchvision's Faster R-CNN state dict (model.state_dict() or torch.load of its .pth file)"
        )
    num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    model = build_model(torchvision_config(name, num_classes))
    report = load_matching_weights(model, state_dict)
    if report.missing or report.shape_mismatch or report.unexpected:
        raise CheckpointError(f"from_torchvision({name!r}): the state dict does not fit this model:\n{report.summary()}")
    if name == "fasterrcnn_resnet50_fpn":
        # Its COCO weights come from Detectron, trained with BatchNorm eps 0; torchvision's builder
        # sets eps 0 after loading them (overwrite_eps), and so do we.
        set_frozen_bn_eps(model.backbone, 0.0)
    return model.eval()
