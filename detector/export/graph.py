"""Our Faster R-CNN's inference as one graph of batch tensors, for ONNX export.

The eager model (modeling/) works on Python lists of per-image tensors, whose lengths a tracer
would freeze into the graph (torchvision's exports break exactly there: another batch size, an
image with no detection). This module reuses the eager model's modules and weights and redoes
only the steps between them with tensors shaped [B, ...] and masks instead of lists:

  images [B, 3, H, W] in 0..1 (one size per batch)
   -> normalize, resize (short side min_size, long side <= max_size), pad to size_divisible
   -> backbone (the model's own module)
   -> RPN head (own module); anchors, per-map top-n, decode, clip, drop tiny / low boxes
      (masked), NMS per map (one NonMaxSuppression over [B, maps, N]), best post-n per image
   -> RoIAlign (one op per map; FPN boxes routed to their level), box head and predictor
   -> softmax, decode per class, clip, score > thresh; NMS per class (NonMaxSuppression over
      [B, K, P*K]) or Soft-NMS unrolled for detections_per_img picks; best D per image
   -> boxes scaled to input pixels; fixed shapes: boxes [B, D, 4], scores [B, D],
      labels [B, D] (1..K, -1 = padding), num_detections [B]

Every shape comes from a tensor, never from a Python number, so B, H and W stay dynamic. The
arithmetic is the eager model's, step for step, so the detections agree to float rounding
(tests/export/test_onnx_export.py). Shapes are computed with torch ops only while tracing
(torch.onnx.export, dynamo=False); run eagerly, this module gives the same outputs.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector import ops
from detector.errors import ExportError
from detector.modeling.anchors import grid_anchors
from detector.modeling.backbones.efficientnet_lite import Conv2dSamePadding
from detector.modeling.faster_rcnn import FasterRCNN
from detector.modeling.geometry import MIN_BOX_SIZE, padded_size, resized_size
from detector.modeling.rpn import RegionProposalNetwork, flatten_predictions, top_proposals_per_level
from detector.modeling.transform import resize_boxes
from detector.ops import SOFT_NMS_METHODS
from detector.ops.soft_suppression import MAX_IOU_TABLE, soft_nms_picks

# Masked scores sit below every real one (probabilities are >= 0): NMS is told to skip them.
MASKED = -1.0
SKIP_BELOW = -0.5


def dim(tensor: Tensor, index: int) -> Tensor:
    """Size `index` of `tensor` as an int64 0-d tensor: a traced value, never a constant."""
    return torch._shape_as_tensor(tensor)[index]


def at_most(size: Tensor, cap: int) -> Tensor:
    """min(size, cap) as a tensor usable as TopK's k (traced, dynamic)."""
    return torch.clamp(size, max=cap)


class BatchedNonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes [B, N, 4] xyxy, scores [B, C, N] -> selected [S, 3] rows
    (image, class, box), each (image, class) by decreasing score, at most `max_per_class`.
    A box is suppressed by a kept box of its class and image when their IoU > iou_threshold
    (torchvision's rule); scores <= score_threshold are never selected. Run eagerly it calls
    torchvision's nms per (image, class), which the exported op must match."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        import torchvision

        rows = []
        for image in range(scores.shape[0]):
            for cls in range(scores.shape[1]):
                candidates = torch.nonzero(scores[image, cls] > score_threshold).squeeze(1)
                keep = torchvision.ops.nms(boxes[image, candidates], scores[image, cls, candidates], iou_threshold)
                keep = candidates[keep[:max_per_class]]
                rows.append(torch.stack([torch.full_like(keep, image), torch.full_like(keep, cls), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        constant = lambda value, dtype: g.op("Constant", value_t=torch.tensor([value], dtype=dtype))  # noqa: E731
        return g.op("NonMaxSuppression", boxes, scores, constant(max_per_class, torch.int64),
                    constant(iou_threshold, torch.float32), constant(score_threshold, torch.float32))


def batched_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float) -> Tensor:
    return BatchedNonMaxSuppression.apply(boxes, scores, max_per_class, iou_threshold, SKIP_BELOW)


def scatter_selected(selected: Tensor, scores: Tensor, shape_like: Tensor) -> Tensor:
    """[B, N] filled with MASKED, except the (image, box) pairs NMS selected, which get the
    score of their class: scores [B, C, N] -> [B, N]."""
    image, cls, box = selected[:, 0], selected[:, 1], selected[:, 2]
    out = torch.full_like(shape_like, MASKED)
    return out.index_put((image, box), scores[image, cls, box])


def take(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, ...] gathered along dim 1 at index [B, M] -> [B, M, ...]."""
    trailing = values.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * len(trailing))).expand(*index.shape, *trailing)
    return values.gather(1, expanded)


class ExportableFasterRCNN(nn.Module):
    """`forward(images [B, 3, H, W] float 0..1) -> (boxes [B, D, 4], scores [B, D], labels [B, D],
    num_detections [B])` for a trained `FasterRCNN` in eval mode, sharing its modules (and so its
    weights). Detections are sorted by decreasing score; the first num_detections are real,
    the rest padding (boxes 0, scores 0, labels -1)."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        roi = model.roi_heads
        if roi.nms_method not in ("hard", *SOFT_NMS_METHODS):
            raise ExportError(f"model.roi_heads.nms_method: {roi.nms_method!r} has no export; "
                              f"use hard, {', '.join(SOFT_NMS_METHODS)}")
        # Padding to a multiple of every map's stride keeps the backbone's "same" paddings and
        # the anchor strides constant, as the graph assumes.
        largest_stride = max(stride for name, stride in zip(model.backbone.featmap_names, model.backbone.strides)
                             if name != "pool")  # the extra max-pooled level: its anchors use floor division as eager
        if model.transform.size_divisible % largest_stride:
            raise ExportError(f"model.transform.size_divisible={model.transform.size_divisible}: the export needs "
                              f"a multiple of the backbone's largest stride, {largest_stride}")
        model.eval()
        self.transform = model.transform
        self.backbone = model.backbone
        self.rpn: RegionProposalNetwork = model.rpn
        self.roi_heads = roi
        self.num_classes = model.num_classes
        self.detections_per_img = roi.detections_per_img
        self.eval()  # inference only: the RPN's test-time top-n, and torch.onnx.export restores this mode

    @contextmanager
    def constant_same_padding(self) -> Iterator[None]:
        """While tracing: the backbone's TF-"same" convs pad by constants, which the export folds
        into the convolutions (onnx.fold_pads_into_convolutions; pads read from the traced shape
        were a copy of the feature map each, 5-11 of 80-110 ms of node time at batch 1 on the
        raccoon sizes). Exact because every batch is padded to a multiple of size_divisible:
        checked here on a random size_divisible x 2 * size_divisible image, where any conv whose
        input is no multiple of its stride would give other features."""
        convs = [module for module in self.backbone.modules() if isinstance(module, Conv2dSamePadding)]
        size = self.transform.size_divisible
        probe = torch.rand((1, 3, size, 2 * size), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            reference = list(self.backbone(probe).values())
            for conv in convs:
                conv.input_divisible_by_stride = True
            try:
                constant = list(self.backbone(probe).values())
                if not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(reference, constant)):
                    for conv in convs:
                        conv.input_divisible_by_stride = False  # traced pads, as eager
                yield
            finally:
                for conv in convs:
                    conv.input_divisible_by_stride = False

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = dim(images, 2), dim(images, 3)
        batch, resized_height, resized_width = self.preprocess(images)
        features = list(self.backbone(batch).values())
        proposals, proposal_valid = self.propose(batch, features, resized_height, resized_width)
        pooled_features = dict(zip(self.backbone.featmap_names, features))
        boxes, scores, labels = self.detect(pooled_features, proposals, proposal_valid, resized_height, resized_width)
        boxes = resize_boxes(boxes, (resized_height, resized_width), (height, width))  # back to input pixels
        valid = labels > 0
        boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
        scores = torch.where(valid, scores, torch.zeros_like(scores))
        # Constant trailing sizes, so the file declares [batch, D, 4] and [batch, D].
        limit = self.detections_per_img
        return boxes.reshape(-1, limit, 4), scores.reshape(-1, limit), labels.reshape(-1, limit), valid.sum(dim=1)

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DetectionTransform for a batch of one size: normalize, resize, pad; (batch, resized H, W)."""
        transform = self.transform
        resized_height, resized_width = resized_size(dim(images, 2), dim(images, 3), transform.min_size, transform.max_size)
        resized = F.interpolate(transform.normalize(images), size=(resized_height, resized_width), mode="bilinear",
                                align_corners=False)
        padded_height, padded_width = padded_size(resized_height, resized_width, transform.size_divisible)
        pad_height, pad_width = padded_height - resized_height, padded_width - resized_width
        batch = F.pad(resized, (torch.zeros_like(pad_width), pad_width, torch.zeros_like(pad_height), pad_height))
        return batch, resized_height, resized_width

    def propose(self, batch: Tensor, features: list[Tensor], height: Tensor, width: Tensor) -> tuple[Tensor, Tensor]:
        """RPN.forward + filter_proposals: proposals [B, P, 4] and a validity mask [B, P]
        (P: the most any image of the batch keeps, at most post_nms_top_n)."""
        rpn = self.rpn
        logits, deltas = rpn.head(features)
        anchors = [grid_anchors(cell, feature, (dim(batch, 2), dim(batch, 3)))
                   for feature, cell in zip(features, rpn.anchor_generator.cell_anchors)]
        # One map at a time: a split of the flattened maps would freeze their sizes into the graph.
        flat = [flatten_predictions([level_logits], [level_deltas]) for level_logits, level_deltas in zip(logits, deltas)]
        boxes, scores, levels = top_proposals_per_level([objectness.flatten(1) for objectness, _ in flat],
                                                        [level_deltas for _, level_deltas in flat], anchors,
                                                        rpn.pre_nms_top_n(), rpn.box_coder)
        boxes = ops.clip_boxes_to_image(boxes, (height, width))
        valid = ops.big_enough(boxes, rpn.min_box_size) & (scores >= rpn.score_thresh)
        # NMS per map: map l's row holds the scores of its own boxes, every other box masked.
        num_levels = len(features)
        in_level = levels[:, None, :] == torch.arange(num_levels)[None, :, None]
        per_level = torch.where(in_level & valid[:, None, :], scores[:, None, :], torch.full_like(scores[:, None, :], MASKED))
        selected = batched_nms(boxes, per_level, rpn.pre_nms_top_n(), rpn.nms_thresh)
        kept_scores = scatter_selected(selected, per_level, scores)
        most_kept = (kept_scores > SKIP_BELOW).sum(dim=1).max()
        count = at_most(torch.clamp(most_kept, min=1), rpn.post_nms_top_n())
        top_scores, top = kept_scores.topk(count, dim=1)
        return take(boxes, top), top_scores > SKIP_BELOW

    def pool(self, features: dict[str, Tensor], proposals: Tensor) -> Tensor:
        """The model's RoIPooler on proposals [B, P, 4] -> [B * P, C, S, S]."""
        boxes = proposals.reshape(-1, 4)
        image_index = torch.arange(dim(proposals, 0)).to(boxes.dtype)[:, None].expand(-1, dim(proposals, 1)).reshape(-1, 1)
        return self.roi_heads.box_roi_pool.pool_rois(features, torch.cat((image_index, boxes), dim=1))

    def detect(self, features: dict[str, Tensor], proposals: Tensor, proposal_valid: Tensor,
               height: Tensor, width: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ROIHeads.forward + predict_detections, batched: (boxes [B, D, 4], scores, labels)."""
        roi = self.roi_heads
        num_images, num_proposals, num_classes = dim(proposals, 0), dim(proposals, 1), self.num_classes
        scores, boxes = roi.classify_and_refine(  # [B * P, K + 1], [B * P, K + 1, 4]
            lambda flat: self.pool(features, flat.view_as(proposals)), proposals.reshape(-1, 4),
            lambda flat: ops.clip_boxes_to_image(flat, (height, width)))
        boxes = boxes.view(num_images, num_proposals, num_classes + 1, 4)[:, :, 1:]
        scores = scores.view(num_images, num_proposals, num_classes + 1)[:, :, 1:]
        valid = (scores > roi.score_thresh) & ops.big_enough(boxes, MIN_BOX_SIZE) & proposal_valid[:, :, None]
        if roi.nms_method == "hard":
            return self.hard_nms(boxes, scores, valid)
        return self.soft_nms(boxes, scores, valid)

    def hard_nms(self, boxes: Tensor, scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class NMS of the (proposal, class) candidates, then the best D of each image."""
        roi, num_classes, limit = self.roi_heads, self.num_classes, self.detections_per_img
        num_images = dim(boxes, 0)
        candidates = boxes.reshape(num_images, -1, 4)  # [B, P * K, 4], (proposal, class) order
        # Class c's row of NMS scores: the scores of class c's candidates, every other one masked.
        masked = torch.where(valid, scores, torch.full_like(scores, MASKED)).reshape(num_images, 1, -1)
        own_class = (torch.arange(num_classes)[:, None] == torch.arange(num_classes)[None, :])  # [K, K]
        candidate_class = own_class[:, None, :].expand(-1, dim(boxes, 1), -1).reshape(1, num_classes, -1)
        per_class = torch.where(candidate_class, masked, torch.full_like(masked, MASKED))
        selected = batched_nms(candidates, per_class, limit, roi.nms_thresh)
        kept_scores = scatter_selected(selected, per_class, masked[:, 0])
        # D more masked slots: every image has at least D entries to rank, detections or not.
        kept_scores = torch.cat((kept_scores, torch.full_like(kept_scores[:, :1], MASKED).expand(-1, limit)), dim=1)
        candidates = torch.cat((candidates, torch.zeros_like(candidates[:, :1]).expand(-1, limit, -1)), dim=1)
        top_scores, top = kept_scores.topk(limit, dim=1)
        labels = torch.where(top_scores > SKIP_BELOW, top % num_classes + 1, torch.full_like(top, -1))
        return take(candidates, top), top_scores, labels

    def soft_nms(self, boxes: Tensor, scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ops.batched_soft_nms, all images and classes at once: detections_per_img picks of
        soft_suppression.soft_nms's Algorithm 1 (unrolled), then the best D of each image."""
        roi, limit = self.roi_heads, self.detections_per_img
        boxes = boxes.transpose(1, 2)  # [B, K, P, 4]
        # An IoU table per image and class when it stays small (K * P^2 <= MAX_IOU_TABLE per image):
        # the 100 unrolled picks were 3,500 of the raccoon graph's 4,200 nodes, half of them IoU rows.
        table = self.num_classes * self.rpn.post_nms_top_n() ** 2 <= MAX_IOU_TABLE
        picked, picked_scores = soft_nms_picks(  # the eager model's Soft-NMS, all images and classes at once
            boxes, scores.transpose(1, 2), valid.transpose(1, 2), limit, roi.nms_method, roi.soft_nms_sigma,
            roi.nms_thresh, roi.soft_nms_min_score, iou_table=table)
        num_images = dim(boxes, 0)
        picked_boxes = boxes.gather(2, picked[..., None].expand(-1, -1, -1, 4)).reshape(num_images, -1, 4)
        top_scores, top = picked_scores.reshape(num_images, -1).topk(limit, dim=1)  # [B, K * D] -> [B, D]
        labels = torch.where(top_scores > -math.inf, top // limit + 1, torch.full_like(top, -1))
        return take(picked_boxes, top), top_scores, labels
