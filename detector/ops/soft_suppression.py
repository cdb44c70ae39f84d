"""Soft-NMS (Bodla et al., "Improving Object Detection With One Line of Code", ICCV 2017).

Greedy NMS deletes every box that overlaps a better one by more than a threshold. Soft-NMS
keeps them and lowers their scores instead, by a factor that falls with the overlap:

    gaussian: score *= exp(-IoU^2 / sigma)
    linear:   score *= 1 - IoU    where IoU > iou_threshold (unchanged below it)

It is the paper's Algorithm 1: take the highest score, decay the others by their IoU with
it, repeat; a box whose decayed score falls below `min_score` is dropped. A second box that is
placed better than the first then still counts at the strict IoU thresholds of COCO mAP, with
a lower score, instead of being deleted. IoU is torchvision's (continuous coordinates).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from detector.choices import SOFT_NMS_METHODS
from detector.errors import InputError

METHODS = SOFT_NMS_METHODS
# The most IoUs soft_nms_picks keeps in a table (16 MB of float32) rather than recomputing rows.
MAX_IOU_TABLE = 1 << 22


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    min_score: float = 1e-3,
    max_kept: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(indices of the kept boxes, their decayed scores), by decreasing decayed score.

    Equal scores are taken in input order. `max_kept` stops after that many picks: the
    boxes picked later could only rank below them. Runs on the device of `boxes`, without a
    host synchronisation per pick.
    """
    if method not in METHODS:
        raise InputError(f"soft_nms: method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise InputError(f"soft_nms: sigma must be > 0, got {sigma}")
    count = boxes.shape[0]
    picks = count if max_kept is None else min(count, max_kept)
    if picks == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    kept, kept_scores = soft_nms_picks(boxes, scores, torch.ones_like(scores, dtype=torch.bool), picks, method, sigma,
                                       iou_threshold, min_score, iou_table=count * count <= MAX_IOU_TABLE)
    valid = kept_scores > -math.inf
    return kept[valid], kept_scores[valid]


def soft_nms_picks(boxes: Tensor, scores: Tensor, alive: Tensor, picks: int, method: str, sigma: float,
                   iou_threshold: float, min_score: float, iou_table: bool = False) -> tuple[Tensor, Tensor]:
    """Algorithm 1 for `picks` steps over any leading dimensions, one independent problem each:
    boxes [..., N, 4], scores and alive (a candidate mask) [..., N] -> (picked indices [..., picks],
    their decayed scores, -inf where nothing was left). No shape is read as a Python number, so
    the exported graph traces this same function over [images, classes, proposals].

    `iou_table`: compute every IoU once ([..., N, N]) and read the picked box's row at each pick,
    instead of computing that row: the same numbers (the same arithmetic per pair), half the ops
    per pick in the exported graph, where the unrolled picks are most of the nodes; the caller
    says whether N * N fits (MAX_IOU_TABLE)."""
    current = scores
    alive = alive & (current >= min_score)
    positions = torch.ones_like(current, dtype=torch.int64).cumsum(-1) - 1
    minus_inf = torch.full_like(current, -math.inf)
    if iou_table:
        # Flat [..., N * N]: IoU of box i with box j at i * N + j, so a pick reads its row with one
        # gather at best * N + positions (no shape to expand per pick in the graph).
        overlaps = pairwise_iou(boxes.unsqueeze(-2), boxes.unsqueeze(-3)).flatten(-2)
        count = positions[..., -1:] + 1
    picked, picked_scores = [], []
    for _ in range(picks):
        candidates = torch.where(alive, current, minus_inf)
        best = candidates.argmax(dim=-1, keepdim=True)  # argmax: the first of equal scores
        picked.append(best)
        picked_scores.append(candidates.gather(-1, best))  # -inf: nothing was left
        if iou_table:
            overlap = overlaps.gather(-1, best * count + positions)
        else:
            best_box = boxes.gather(-2, best.unsqueeze(-1).expand(*([-1] * best.dim()), 4))
            overlap = pairwise_iou(best_box, boxes)
        alive = alive & (positions != best)
        if method == "gaussian":
            current = current * torch.exp(-(overlap * overlap) / sigma)
        else:
            current = current * torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap))
        alive = alive & (current >= min_score)
    return torch.cat(picked, dim=-1), torch.cat(picked_scores, dim=-1)


def pairwise_iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of box [..., 1, 4] with boxes [..., N, 4] -> [..., N], in torchvision's box_iou order
    of operations (so the decays are the numbers ops.box_iou would give)."""
    area1 = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    area2 = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    width = (torch.minimum(box[..., 2], boxes[..., 2]) - torch.maximum(box[..., 0], boxes[..., 0])).clamp(min=0)
    height = (torch.minimum(box[..., 3], boxes[..., 3]) - torch.maximum(box[..., 1], boxes[..., 1])).clamp(min=0)
    inter = width * height
    return inter / (area1 + area2 - inter)


def batched_soft_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, max_kept: int | None = None, **options
) -> tuple[Tensor, Tensor]:
    """Soft-NMS within each value of `idxs` (a class): boxes of different classes never decay
    each other. (indices, decayed scores), by decreasing decayed score, at most `max_kept`."""
    kept, kept_scores = [], []
    for label in torch.unique(idxs):
        in_class = torch.nonzero(idxs == label).squeeze(1)
        index, score = soft_nms(boxes[in_class], scores[in_class], max_kept=max_kept, **options)
        kept.append(in_class[index])
        kept_scores.append(score)
    if not kept:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    kept, kept_scores = torch.cat(kept), torch.cat(kept_scores)
    order = kept_scores.sort(descending=True, stable=True).indices[:max_kept]
    return kept[order], kept_scores[order]
