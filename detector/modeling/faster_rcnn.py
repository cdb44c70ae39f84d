"""Faster R-CNN: transform -> backbone -> RPN -> ROI heads -> boxes in original image coordinates.

The call contract is torchvision's, so either model can stand in for the other:
`model(images, targets)` with images a list of [3, H, W] float tensors in 0..1 and targets a
list of {"boxes": [N, 4] xyxy pixels, "labels": [N] int64 in 1..K}; training returns the four
losses, eval returns [{"boxes", "labels", "scores"}] per image.
"""
from __future__ import annotations

import json
from functools import partial

import torch
from torch import Tensor, nn

from detector import choices
from detector.choices import spell
from detector.config import Config, ModelConfig
from detector.errors import ConfigError, TargetError
from detector.modeling.anchors import AnchorGenerator
from detector.modeling.backbones import build_backbone
from detector.modeling.roi_heads import BoxPredictor, ConvFCHead, RefinementStage, ROIHeads, TwoFCHead
from detector.modeling.roi_pooler import RoIPooler
from detector.modeling.rpn import RegionProposalNetwork, RPNHead
from detector.modeling.transform import DetectionTransform


class FasterRCNN(nn.Module):
    """Faster R-CNN (Ren et al., 2015): transform -> backbone -> RPN -> ROI heads.

    Built by `build_model(config)`; the parts are injected, so each can be swapped or tested
    alone. `model(images, targets)` in train mode returns the four losses (`loss_objectness`,
    `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`, and per Cascade R-CNN stage k
    `loss_classifier_stagek`, `loss_box_reg_stagek`: `loss_names()`); in eval mode `model(images)` returns
    one {"boxes" [N, 4] xyxy, "labels" [N] in 1..K, "scores" [N]} per image, in the coordinates
    of the image given. `images`: list of [3, H, W] float tensors in 0..1, any sizes. Label 0
    is background and is never returned.
    """

    def __init__(
        self,
        transform: DetectionTransform,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: ROIHeads,
        num_classes: int,
    ):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    def loss_names(self) -> tuple[str, ...]:
        """The keys of the training losses, in the order the model returns them."""
        stages = [f"_stage{k}" for k in range(1, len(self.roi_heads.refinements) + 1)]
        return ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                *[name + stage for stage in stages for name in ("loss_classifier", "loss_box_reg")])

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training mode: the four losses of `images` against `targets` (checked first, a TargetError
        naming what is wrong). Eval mode: `detect(images)`, one {"boxes", "labels", "scores"} per image."""
        if not self.training:
            return self.detect(images)
        if targets is None:
            raise TargetError("training mode needs targets: model(images, targets)")
        self.check_targets(images, targets)
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        _, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        return {**rpn_losses, **roi_losses}

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Inference, one forward per group of images that run at the same padded size, so an
        image's detections do not depend on the batch it came in (transform.run_size_groups)."""
        detections: list[dict[str, Tensor]] = [{} for _ in images]
        for group in self.transform.run_size_groups(images):
            for index, detection in zip(group, self.detect_same_size([images[i] for i in group])):
                detections[index] = detection
        return detections

    def detect_same_size(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of images that run as one batch (one forward pass), boxes mapped back to each
        image's own size; `detect` calls it once per group of the same padded size."""
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, features)
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def check_targets(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """Raise a TargetError naming the target and box at fault: one target per image, float [N, 4]
        boxes with x2 > x1, y2 > y1 and finite coordinates, int64 [N] labels in 1..num_classes."""
        if len(targets) != len(images):
            raise TargetError(f"{len(images)} images but {len(targets)} targets")
        for index, target in enumerate(targets):
            boxes, labels = target.get("boxes"), target.get("labels")
            if boxes is None or labels is None:
                raise TargetError(f"target {index}: needs 'boxes' and 'labels', got keys {sorted(target)}")
            if not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
                raise TargetError(f"target {index}: boxes must be a float [N, 4] tensor, got {boxes.dtype} {tuple(boxes.shape)}")
            if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
                raise TargetError(
                    f"target {index}: labels must be int64 [{boxes.shape[0]}], got {labels.dtype} {tuple(labels.shape)}"
                )
            bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                box_index = int(torch.where(bad)[0][0])
                raise TargetError(
                    f"target {index}: box {box_index} {boxes[box_index].tolist()} has zero or negative width/height "
                    "(or a non-finite coordinate); boxes are (x1, y1, x2, y2) with x2 > x1 and y2 > y1"
                )
            wrong = (labels < 1) | (labels > self.num_classes)
            if wrong.any():
                box_index = int(torch.where(wrong)[0][0])
                raise TargetError(
                    f"target {index}: box {box_index} has label {int(labels[box_index])}; labels run from 1 to "
                    f"{self.num_classes} (0 is background, added by the model)"
                )


def build_model(config: Config | ModelConfig) -> FasterRCNN:
    """A Faster R-CNN from a config (`detector.load_config(...)` or its `.model`)."""
    cfg = config.model if isinstance(config, Config) else config
    backbone = build_backbone(cfg.backbone)
    transform = DetectionTransform(
        min_size=cfg.transform.min_size,
        max_size=cfg.transform.max_size,
        image_mean=cfg.transform.image_mean or backbone.image_mean,
        image_std=cfg.transform.image_std or backbone.image_std,
        size_divisible=cfg.transform.size_divisible,
        train_min_sizes=tuple(cfg.transform.train_min_sizes or ()),
    )

    check_anchors_fit_backbone(cfg, backbone)
    anchor_generator = AnchorGenerator(cfg.anchors.sizes, cfg.anchors.aspect_ratios)
    anchors_per_location = set(anchor_generator.num_anchors_per_location())
    if len(anchors_per_location) != 1:
        raise ConfigError(
            f"model.anchors: every feature map needs the same number of anchors per location (one shared "
            f"RPN head), got {anchor_generator.num_anchors_per_location()}"
        )
    rpn = RegionProposalNetwork(
        anchor_generator,
        RPNHead(backbone.out_channels, anchors_per_location.pop(), conv_depth=cfg.rpn.conv_depth),
        fg_iou_thresh=cfg.rpn.fg_iou_thresh,
        bg_iou_thresh=cfg.rpn.bg_iou_thresh,
        batch_size_per_image=cfg.rpn.batch_size_per_image,
        positive_fraction=cfg.rpn.positive_fraction,
        pre_nms_top_n={"training": cfg.rpn.pre_nms_top_n_train, "testing": cfg.rpn.pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn.post_nms_top_n_train, "testing": cfg.rpn.post_nms_top_n_test},
        nms_thresh=cfg.rpn.nms_thresh,
        score_thresh=cfg.rpn.score_thresh,
        min_box_size=cfg.rpn.min_box_size,
    )

    roi = cfg.roi_heads

    def new_box_head() -> nn.Module:
        if roi.head == "two_fc":
            return TwoFCHead(backbone.out_channels * roi.pool_size**2, roi.representation_size)
        if roi.head == "conv":
            return ConvFCHead(backbone.out_channels, roi.pool_size, roi.conv_layers, roi.representation_size, roi.conv_norm)
        raise ConfigError(f"model.roi_heads.head: unknown head {roi.head!r}; choose {spell(choices.ROI_HEADS)}")

    box_head = new_box_head()
    # Cascade R-CNN stages, each with a new head of the same kind; stage k codes boxes with
    # the first stage's weights x (k + 1).
    refinements = [RefinementStage(head := new_box_head(), BoxPredictor(head.out_features, cfg.num_classes), iou,
                                   tuple(weight * (stage + 1) for weight in roi.box_reg_weights))
                   for stage, iou in enumerate(roi.cascade_ious, start=1)]
    # Every map but the max-pooled extra level of an FPN is pooled from, as in torchvision.
    featmap_names = [name for name in backbone.featmap_names if name != "pool"]
    strides = [stride for name, stride in zip(backbone.featmap_names, backbone.strides) if name != "pool"]
    roi_heads = ROIHeads(
        RoIPooler(featmap_names, strides, roi.pool_size, roi.sampling_ratio),
        box_head,
        BoxPredictor(box_head.out_features, cfg.num_classes),
        fg_iou_thresh=roi.fg_iou_thresh,
        bg_iou_thresh=roi.bg_iou_thresh,
        batch_size_per_image=roi.batch_size_per_image,
        positive_fraction=roi.positive_fraction,
        box_reg_weights=tuple(roi.box_reg_weights),
        score_thresh=roi.score_thresh,
        nms_thresh=roi.nms_thresh,
        detections_per_img=roi.detections_per_img,
        nms_method=roi.nms_method,
        soft_nms_sigma=roi.soft_nms_sigma,
        soft_nms_min_score=roi.soft_nms_min_score,
        box_loss=roi.box_loss,
        refinements=refinements,
    )
    return FasterRCNN(transform, backbone, rpn, roi_heads, cfg.num_classes)


def check_anchors_fit_backbone(cfg: ModelConfig, backbone: nn.Module) -> None:
    """One anchor set per feature map the backbone returns, checked when the model is built
    (not at the first forward pass), naming the keys to change."""
    maps = len(backbone.featmap_names)
    if len(cfg.anchors.sizes) != maps:
        compact = partial(json.dumps, separators=(",", ":"))  # pastes as one shell word
        suggestion = compact([list(sizes) for sizes in backbone.default_anchor_sizes])
        ratios = compact([list(cfg.anchors.aspect_ratios[0])] * maps)
        raise ConfigError(
            f"model.anchors.sizes has {len(cfg.anchors.sizes)} list(s) but model.backbone.name="
            f"{cfg.backbone.name} with model.backbone.fpn={str(cfg.backbone.fpn).lower()} returns {maps} feature "
            f"map(s) (strides {', '.join(map(str, backbone.strides))}); give one list per map, e.g. "
            f"model.anchors.sizes={suggestion} model.anchors.aspect_ratios={ratios}"
        )
