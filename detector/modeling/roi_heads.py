"""The second stage: classify each proposal and refine its box.

RoIAlign pools a 7x7 feature per proposal; a box head (two FC layers of 1024, or convs + FC)
feeds a predictor with K+1 class logits (softmax + cross-entropy, 0 = background) and 4 deltas
per class. Training appends the GT boxes to the proposals, labels them with the matcher
(IoU >= 0.5 object), samples 512 per image at <= 25% objects, and returns the two losses.
Inference: softmax, decode per class, score >= 0.05, per-class NMS 0.5 (or Soft-NMS, which
lowers the scores of overlapping boxes instead of deleting them), best 100.

With `cascade_ious` (Cascade R-CNN, Cai & Vasconcelos, CVPR 2018), refinement stages follow:
each has its own box head and predictor, pools the boxes the stage before it refined, and is
trained on them at a higher IoU threshold (0.6, 0.7), so it learns the finer corrections that
AP75-AP95 ask for. Inference averages the stages' class probabilities and keeps the last
stage's boxes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector import choices, ops
from detector.choices import spell
from detector.ops.fallback import match_with_fallback
from detector.modeling.box_coder import BoxCoder
from detector.modeling.box_loss import box_regression_loss
from detector.modeling.geometry import MIN_BOX_SIZE
from detector.modeling.roi_pooler import RoIPooler
from detector.modeling.sampler import sample_balanced
from detector.errors import ConfigError, TargetError


class TwoFCHead(nn.Module):
    def __init__(self, in_features: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: bool):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvFCHead(nn.Sequential):
    """convs (3x3, optional BatchNorm) -> flatten -> one FC layer; torchvision's FastRCNNConvFCHead layout."""

    def __init__(self, in_channels: int, pool_size: int, conv_layers: list[int], fc_size: int, norm: bool):
        blocks: list[nn.Module] = []
        channels = in_channels
        for out_channels in conv_layers:
            blocks.append(ConvNormReLU(channels, out_channels, norm))
            channels = out_channels
        blocks += [nn.Flatten(), nn.Linear(channels * pool_size * pool_size, fc_size), nn.ReLU(inplace=True)]
        super().__init__(*blocks)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        self.out_features = fc_size


class BoxPredictor(nn.Module):
    """Class logits (num_classes + 1, background first) and per-class box deltas."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)
        # Small initial outputs: a new head starts near "uniform classes, no box change" (detectron2's init).
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class RefinementStage(nn.Module):
    """One Cascade R-CNN stage after the first: its own box head and predictor, trained on the
    boxes the stage before it refined, labelled object at IoU >= `iou_thresh`. Its box coding
    weights are larger (stage k: the first stage's x (k + 1), the paper's (20, 20, 10, 10) and
    (30, 30, 15, 15)) because the deltas left to predict shrink from stage to stage."""

    def __init__(self, box_head: nn.Module, box_predictor: BoxPredictor, iou_thresh: float,
                 box_reg_weights: tuple[float, float, float, float]):
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.iou_thresh = iou_thresh
        self.box_coder = BoxCoder(box_reg_weights)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(pooled))


# MMDetection's Cascade R-CNN weights stage k's losses by 0.5^k: (1, 0.5, 0.25).
STAGE_LOSS_DECAY = 0.5


def boxes_of_class(boxes: Tensor, classes: Tensor) -> Tensor:
    """boxes [N, K + 1, 4], one per class, -> [N, 4]: each row's box of classes[n]."""
    return boxes.gather(1, classes.reshape(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)


def image_clipper(boxes_per_image: list[int], image_sizes: list[tuple[int, int]],
                  like: Tensor) -> Callable[[Tensor], Tensor]:
    """A function clamping flat boxes [N, ..., 4] (the images' boxes one after another) into
    their own image, as ops.clip_boxes_to_image does one image at a time."""
    limits = torch.cat([like.new_tensor([width, height, width, height]).expand(count, 4)
                        for count, (height, width) in zip(boxes_per_image, image_sizes)])

    def clip(boxes: Tensor) -> Tensor:
        return torch.minimum(boxes.clamp(min=0), limits.view(-1, *[1] * (boxes.dim() - 2), 4))
    return clip


class ROIHeads(nn.Module):
    """The second stage: RoIAlign features of each proposal -> box head -> class scores and
    per-class box refinements.

    Training: the ground-truth boxes join the proposals, proposals are matched at
    `fg_iou_thresh`, `batch_size_per_image` are sampled at `positive_fraction` objects, and the
    losses are softmax + cross-entropy over K+1 classes and, on the true class's deltas,
    smooth-L1 or GIoU of the boxes they decode to (`box_loss`, modeling/box_loss.py).
    Each `refinements` stage (Cascade R-CNN) repeats this on the boxes of the stage before,
    its losses named `loss_classifier_stage1`, ... and weighted 0.5^k.
    Inference: softmax, decode per class, drop scores < `score_thresh`, per-class NMS at
    `nms_thresh` (or Soft-NMS with `nms_method` gaussian / linear), keep `detections_per_img`.
    `forward(features, proposals, image_sizes, targets)` returns (detections, losses).
    """

    def __init__(
        self,
        box_roi_pool: RoIPooler,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        nms_method: str = "hard",
        soft_nms_sigma: float = 0.5,
        soft_nms_min_score: float = 1e-3,
        box_loss: str = "smooth_l1",
        refinements: list[RefinementStage] | None = None,
    ):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = BoxCoder(box_reg_weights)
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        if nms_method not in choices.NMS_METHODS:
            raise ConfigError(f"model.roi_heads.nms_method: {spell(choices.NMS_METHODS)}, got {nms_method!r}")
        self.nms_method = nms_method
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_min_score = soft_nms_min_score
        if box_loss not in choices.BOX_LOSSES:
            raise ConfigError(f"model.roi_heads.box_loss: {spell(choices.BOX_LOSSES)}, got {box_loss!r}")
        self.box_loss = box_loss
        # Empty for plain Faster R-CNN, so its state dict keeps torchvision's layout.
        self.refinements = nn.ModuleList(refinements or [])
        self.last_sampled_counts: dict[str, float] = {}

    def stages(self) -> list[tuple[Callable[[Tensor], tuple[Tensor, Tensor]], BoxCoder, float, float]]:
        """(pooled features -> (class logits, box deltas), box coder, fg IoU, bg IoU) of every stage."""
        first = (lambda pooled: self.box_predictor(self.box_head(pooled)), self.box_coder,
                 self.fg_iou_thresh, self.bg_iou_thresh)
        return [first] + [(stage, stage.box_coder, stage.iou_thresh, stage.iou_thresh) for stage in self.refinements]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise TargetError("the ROI heads need targets in training mode")
            return [], self.training_losses(features, proposals, image_sizes, targets)
        boxes_per_image = [p.shape[0] for p in proposals]
        scores, boxes = self.classify_and_refine(
            lambda flat: self.box_roi_pool(features, list(flat.split(boxes_per_image))), torch.cat(proposals),
            image_clipper(boxes_per_image, image_sizes, proposals[0]))
        return self.predict_detections(scores, boxes, boxes_per_image), {}

    def classify_and_refine(self, pool: Callable[[Tensor], Tensor], boxes: Tensor,
                            clip: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Class probabilities [N, K + 1] and per-class boxes [N, K + 1, 4] (clipped) of N
        proposals, through every stage; `pool` turns boxes [N, 4] into RoI features. Each
        refinement stage pools the previous stage's box of its most likely object class (as
        MMDetection's Cascade R-CNN); the probabilities are the stages' mean, the boxes the
        last stage's. One implementation for the eager model and the exported graph."""
        probabilities = []
        for index, (predict, coder, _, _) in enumerate(self.stages()):
            if index:
                boxes = clip(boxes_of_class(coder_before.decode(box_deltas, boxes), probabilities[-1][:, 1:].argmax(1) + 1))
            class_logits, box_deltas = predict(pool(boxes))
            probabilities.append(F.softmax(class_logits, -1))
            coder_before = coder
        scores = probabilities[0] if len(probabilities) == 1 else torch.stack(probabilities).mean(0)
        return scores, clip(coder_before.decode(box_deltas, boxes))

    def training_losses(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                        targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        losses = {}
        stages = self.stages()
        for index, (predict, coder, fg_iou_thresh, bg_iou_thresh) in enumerate(stages):
            proposals, labels, regression_targets = self.label_and_sample_proposals(
                proposals, targets, fg_iou_thresh, bg_iou_thresh, coder, count=index == 0)
            class_logits, box_deltas = predict(self.box_roi_pool(features, proposals))
            stage_losses = self.compute_loss(class_logits, box_deltas, labels, regression_targets, proposals, coder)
            suffix, weight = (f"_stage{index}", STAGE_LOSS_DECAY**index) if index else ("", 1.0)
            losses.update({name + suffix: weight * loss for name, loss in stage_losses.items()})
            if index + 1 < len(stages):
                # The next stage trains on these boxes, refined with the deltas of their true class
                # (background: the most likely object class), as fixed inputs (no gradient through them).
                labels = torch.cat(labels)
                classes = torch.where(labels > 0, labels, class_logits[:, 1:].argmax(1) + 1)
                boxes_per_image = [p.shape[0] for p in proposals]
                clip = image_clipper(boxes_per_image, image_sizes, proposals[0])
                refined = clip(boxes_of_class(coder.decode(box_deltas.detach(), torch.cat(proposals)), classes))
                proposals = list(refined.split(boxes_per_image))
        return losses

    def label_and_sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]], fg_iou_thresh: float | None = None,
        bg_iou_thresh: float | None = None, box_coder: BoxCoder | None = None, count: bool = True,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Proposals + GT boxes matched at fg / bg IoU (default: this head's), sampled, with
        their labels and regression targets; `count` records the sampled counts for the log."""
        fg_iou_thresh = self.fg_iou_thresh if fg_iou_thresh is None else fg_iou_thresh
        bg_iou_thresh = self.bg_iou_thresh if bg_iou_thresh is None else bg_iou_thresh
        box_coder = box_coder or self.box_coder
        sampled_proposals, sampled_labels, regression_targets = [], [], []
        positives = negatives = 0
        for index, (image_proposals, target) in enumerate(zip(proposals, targets)):
            gt_boxes = target["boxes"].to(image_proposals.dtype)
            gt_labels = target["labels"]
            # The GT boxes themselves are proposals too: the head always sees perfect examples.
            image_proposals = torch.cat((image_proposals, gt_boxes))
            if gt_boxes.numel() == 0:
                matched = torch.zeros(image_proposals.shape[0], dtype=torch.int64, device=image_proposals.device)
                labels = torch.zeros_like(matched)
                gt_boxes = image_proposals.new_zeros((1, 4))
            else:
                matches = match_with_fallback(gt_boxes, image_proposals, fg_iou_thresh, bg_iou_thresh,
                                              allow_low_quality=False, image=target.get("file", index))
                matched = matches.clamp(min=0)
                labels = gt_labels[matched].to(torch.int64)
                labels[matches == ops.BELOW_LOW_THRESHOLD] = 0
                labels[matches == ops.BETWEEN_THRESHOLDS] = -1
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            positives += pos.numel()
            negatives += neg.numel()
            keep = torch.cat([pos, neg]).sort().values
            sampled_proposals.append(image_proposals[keep])
            sampled_labels.append(labels[keep])
            regression_targets.append(box_coder.encode(gt_boxes[matched[keep]], image_proposals[keep]))
        if count:
            self.last_sampled_counts = {"roi_fg": positives / len(proposals), "roi_bg": negatives / len(proposals)}
        return sampled_proposals, sampled_labels, regression_targets

    def compute_loss(
        self, class_logits: Tensor, box_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor],
        proposals: list[Tensor], box_coder: BoxCoder | None = None,
    ) -> dict[str, Tensor]:
        labels = torch.cat(labels)
        regression_targets = torch.cat(regression_targets)
        classification_loss = F.cross_entropy(class_logits, labels)
        # Only foreground proposals regress, and only through the deltas of their own class.
        positive = torch.where(labels > 0)[0]
        box_deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)
        box_loss = box_regression_loss(self.box_loss, box_deltas[positive, labels[positive]], regression_targets[positive],
                                       torch.cat(proposals)[positive], box_coder or self.box_coder, labels.numel())
        return {"loss_classifier": classification_loss, "loss_box_reg": box_loss}

    def predict_detections(self, scores: Tensor, boxes: Tensor, boxes_per_image: list[int]) -> list[dict[str, Tensor]]:
        """Detections of each image from the class probabilities [N, K + 1] and per-class boxes
        [N, K + 1, 4] (clipped) of its proposals."""
        num_classes = scores.shape[-1]
        detections = []
        for boxes, scores in zip(boxes.split(boxes_per_image), scores.split(boxes_per_image)):
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # Every (proposal, class) pair is a candidate; column 0 is background.
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.remove_small_boxes(boxes, min_size=MIN_BOX_SIZE)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if self.nms_method == "hard":
                keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
                scores = scores[keep]
            else:
                keep, scores = ops.batched_soft_nms(
                    boxes, scores, labels, self.detections_per_img, method=self.nms_method,
                    sigma=self.soft_nms_sigma, iou_threshold=self.nms_thresh, min_score=self.soft_nms_min_score,
                )
            detections.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores})
        return detections
