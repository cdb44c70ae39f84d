"""The ROI head's box regression loss (`model.roi_heads.box_loss`).

  smooth_l1  on the encoded deltas (dx, dy, dw, dh) of each foreground proposal's own class,
             beta 1/9: the paper's and torchvision's, the default
  giou       on the boxes those deltas decode to, against the ground-truth box: 1 - GIoU,
             GIoU = IoU - (enclosing area - union) / enclosing area (Rezatofighi et al., CVPR
             2019). It is measured in overlap, the quantity AP75-AP95 asks for, and it still
             pulls boxes that do not overlap yet (the enclosing-area term).

Both are summed over the foreground proposals and divided by the number of sampled proposals
(foreground and background), as the classification loss is averaged. GIoU is then weighted by
GIOU_LOSS_WEIGHT = 10, MMDetection's for Faster R-CNN with GIoULoss over the same normalizer:
on proposals at IoU >= 0.5 with their ground truth, 1 - GIoU averages 0.39 per box and
smooth-L1 of the (10, 10, 5, 5) weighted deltas 3.1 (8x), so unweighted it would leave the box
branch undertrained.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.box_coder import BoxCoder

GIOU_LOSS_WEIGHT = 10.0
SMOOTH_L1_BETA = 1 / 9


def generalized_iou_loss(boxes: Tensor, targets: Tensor, eps: float = 1e-7) -> Tensor:
    """[N] 1 - GIoU of each pair of xyxy boxes (torchvision.ops.generalized_box_iou_loss with
    reduction="none")."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    tx1, ty1, tx2, ty2 = targets.unbind(-1)
    width = (torch.min(x2, tx2) - torch.max(x1, tx1)).clamp(min=0)
    intersection = width * (torch.min(y2, ty2) - torch.max(y1, ty1)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.max(x2, tx2) - torch.min(x1, tx1)) * (torch.max(y2, ty2) - torch.min(y1, ty1))
    return 1 - (iou - (enclosing - union) / (enclosing + eps))


def box_regression_loss(kind: str, deltas: Tensor, target_deltas: Tensor, proposals: Tensor, box_coder: BoxCoder,
                        normalizer: int) -> Tensor:
    """The loss of `kind` over the foreground proposals: their predicted deltas [P, 4] (of their
    own class), the deltas to their ground-truth boxes [P, 4], the proposals [P, 4] xyxy."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(deltas, target_deltas, beta=SMOOTH_L1_BETA, reduction="sum") / max(normalizer, 1)
    predicted = box_coder.decode(deltas, proposals)[:, 0]
    truth = box_coder.decode(target_deltas, proposals)[:, 0]  # the ground-truth boxes, back from their encoding
    return GIOU_LOSS_WEIGHT * generalized_iou_loss(predicted, truth).sum() / max(normalizer, 1)
