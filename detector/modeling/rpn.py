"""Region Proposal Network.

A 3x3 conv slides over every feature map; two 1x1 convs predict, for each of the k anchors of a
location, one objectness logit (object vs background, sigmoid + BCE) and 4 box deltas. Training
labels anchors with the matcher (IoU >= 0.7 object, < 0.3 background, each GT's best anchors
object), samples 256 per image (<= 128 objects) and returns the two RPN losses. Every forward
also turns the deltas into proposals: decode, top-n per level, clip, drop tiny boxes, NMS per
level, top-n per image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector import ops
from detector.ops.fallback import match_with_fallback
from detector.modeling.anchors import AnchorGenerator
from detector.modeling.box_coder import BoxCoder
from detector.modeling.sampler import sample_balanced
from detector.modeling.transform import ImageList
from detector.errors import TargetError


class ConvReLU(nn.Sequential):
    """3x3 conv + ReLU, laid out like torchvision's Conv2dNormActivation so weights load by name."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[ConvReLU(in_channels) for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_predictions(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level maps [N, A*C, H, W] -> [N, sum(H*W*A), C] in anchor order (location, then anchor)."""
    flat_logits, flat_deltas = [], []
    for level_logits, level_deltas in zip(logits, deltas):
        n, a, h, w = level_logits.shape
        flat_logits.append(level_logits.view(n, a, 1, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 1))
        flat_deltas.append(level_deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """The Region Proposal Network: objectness and box deltas for every anchor, turned into
    proposals for the ROI heads.

    Training: anchors are labelled by IoU with the ground truth (>= fg_iou_thresh object,
    < bg_iou_thresh background, each box's best anchors object), `batch_size_per_image`
    anchors are sampled per image at `positive_fraction` objects, and the losses are
    sigmoid + BCE on objectness and smooth-L1 on the deltas of the object anchors.
    Proposals (both modes): decode, keep the `pre_nms_top_n` best per map, clip, drop tiny
    boxes, NMS at `nms_thresh` per map, keep the `post_nms_top_n` best per image.
    `forward(images, features, targets)` returns (proposals per image, losses).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_box_size: float = 1e-3,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self._pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self._post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_box_size = min_box_size
        # Observability: how many object / background anchors the last training step sampled.
        self.last_sampled_counts: dict[str, float] = {}

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feature_maps = list(features.values())
        logits, deltas = self.head(feature_maps)
        anchors = self.anchor_generator(tuple(images.tensors.shape[-2:]), feature_maps)
        anchors_per_level = [lvl.shape[1] * lvl.shape[2] * lvl.shape[3] for lvl in logits]
        objectness, pred_deltas = flatten_predictions(logits, deltas)  # [N, A, 1], [N, A, 4]
        num_images = objectness.shape[0]
        # Proposals from the predictions of each map (detached: no gradient flows through them).
        boxes = self.filter_proposals(anchors, objectness.detach().view(num_images, -1).split(anchors_per_level, dim=1),
                                      pred_deltas.detach().split(anchors_per_level, dim=1), images.image_sizes,
                                      anchors_per_level)

        losses = {}
        if self.training:
            if targets is None:
                raise TargetError("the RPN needs targets in training mode")
            labels, regression_targets = self.label_anchors(anchors, targets)
            losses = self.compute_loss(objectness.view(num_images, -1), pred_deltas, labels, regression_targets)
        return boxes, losses

    def label_anchors(self, anchors: Tensor, targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: labels (1 object, 0 background, -1 ignored) and regression targets of every anchor."""
        labels, regression_targets = [], []
        for index, target in enumerate(targets):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:  # a negative image: every anchor is background
                labels.append(torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device))
                regression_targets.append(torch.zeros_like(anchors))
                continue
            matched = match_with_fallback(gt_boxes, anchors, self.fg_iou_thresh, self.bg_iou_thresh,
                                          allow_low_quality=True, image=target.get("file", index))
            image_labels = (matched >= 0).to(torch.float32)
            image_labels[matched == ops.BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
            regression_targets.append(self.box_coder.encode(gt_boxes[matched.clamp(min=0)], anchors))
        return labels, regression_targets

    def compute_loss(
        self, objectness: Tensor, pred_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> dict[str, Tensor]:
        num_anchors = objectness.shape[1]
        positives, negatives = [], []
        for image_index, image_labels in enumerate(labels):
            pos, neg = sample_balanced(image_labels, self.batch_size_per_image, self.positive_fraction)
            positives.append(pos + image_index * num_anchors)
            negatives.append(neg + image_index * num_anchors)
        positives, negatives = torch.cat(positives), torch.cat(negatives)
        sampled = torch.cat([positives, negatives])
        self.last_sampled_counts = {"rpn_fg": positives.numel() / len(labels), "rpn_bg": negatives.numel() / len(labels)}

        box_loss = F.smooth_l1_loss(
            pred_deltas.reshape(-1, 4)[positives],
            torch.cat(regression_targets)[positives],
            beta=1 / 9,
            reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels)[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

    def filter_proposals(
        self, anchors: Tensor, objectness: Sequence[Tensor], deltas: Sequence[Tensor], image_sizes: list[tuple[int, int]],
        anchors_per_level: list[int],
    ) -> list[Tensor]:
        """Top-n per level by objectness, decode (only those: the rest would be thrown away), clip,
        drop tiny and low-score boxes, NMS per level, top-n. `objectness` [N, A_l] and `deltas`
        [N, A_l, 4]: one of each per map, in anchor order."""
        proposals, scores, levels = top_proposals_per_level(
            objectness, deltas, anchors.split(anchors_per_level), self.pre_nms_top_n(), self.box_coder)
        kept_boxes = []
        for boxes, image_scores, image_levels, image_size in zip(proposals, scores, levels, image_sizes):
            boxes = ops.clip_boxes_to_image(boxes, image_size)
            keep = ops.remove_small_boxes(boxes, self.min_box_size)
            boxes, image_scores, image_levels = boxes[keep], image_scores[keep], image_levels[keep]
            keep = torch.where(image_scores >= self.score_thresh)[0]
            boxes, image_scores, image_levels = boxes[keep], image_scores[keep], image_levels[keep]
            keep = ops.batched_nms(boxes, image_scores, image_levels, self.nms_thresh)[: self.post_nms_top_n()]
            kept_boxes.append(boxes[keep])
        return kept_boxes


def top_proposals_per_level(objectness: Sequence[Tensor], deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                            top_n: int, box_coder: BoxCoder) -> tuple[Tensor, Tensor, Tensor]:
    """Per map, its `top_n` anchors by objectness (all when it has fewer), decoded: boxes
    [B, N, 4], objectness probabilities [B, N] and the map of each [B, N], maps in order.
    `objectness` [B, A_l] logits, `deltas` [B, A_l, 4] and `anchors` [A_l, 4], one per map in
    anchor order (flatten_predictions). Decoding only the top anchors gives the same boxes as
    decoding all, then picking. No shape is read as a Python number, so the exported graph
    traces this same function."""
    boxes, scores, levels = [], [], []
    for level, (level_logits, level_deltas, level_anchors) in enumerate(zip(objectness, deltas, anchors)):
        count = torch.clamp(torch._shape_as_tensor(level_logits)[1], max=top_n)
        top_logits, top = level_logits.topk(count, dim=1)
        top_deltas = level_deltas.gather(1, top[..., None].expand(-1, -1, 4))
        decoded = box_coder.decode(top_deltas.reshape(-1, 4), level_anchors[top].reshape(-1, 4))
        boxes.append(decoded.view_as(top_deltas))
        scores.append(torch.sigmoid(top_logits))
        levels.append(torch.full_like(top, level))
    return torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(levels, dim=1)
