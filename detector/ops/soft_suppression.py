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
    the exported graph traces this same function over [images, classes, proposals], where the
    unrolled picks are most of the nodes: with the table a pick is 4 of them (ArgMax, Add,
    Gather, Mul).

    Every factor is in [0, 1], so a score only falls, and a box is alive exactly while its score
    is >= min_score. No mask is carried from pick to pick: a dead box holds a score below
    min_score (0 to start with) and keeps one, and the picked box's factor for itself is 0. A
    min_score of 0 counts as the dtype's smallest normal number (a score of 0 is never kept).
    Nor is a picked score read at its pick: afterwards it is the box's first score times the
    factors of the boxes picked before it (picked_scores). Nothing is NaN or infinite inside the
    picks: OpenVINO's comparisons do not follow IEEE's for NaN, and -inf x 0 is NaN.

    `iou_table`: compute every box pair's factor once ([..., N, N]) and read the picked box's row
    at each pick, instead of computing that row: the same numbers (the same arithmetic per pair),
    fewer ops per pick; the caller says whether N * N fits (MAX_IOU_TABLE)."""
    leading, count = scores.shape[:-1], scores.shape[-1]
    boxes, scores, alive = boxes.reshape(-1, count, 4), scores.reshape(-1, count), alive.reshape(-1, count)
    floor = max(min_score, torch.finfo(scores.dtype).tiny)
    first = torch.where(alive & (scores >= floor), scores, torch.zeros_like(scores))  # [P, N]
    positions = torch.ones_like(first, dtype=torch.int64).cumsum(-1) - 1
    if iou_table:
        # [P * N, N]: problem p's box i's factor on its box j in row p * N + i, so a pick reads its
        # rows with one Gather at best + p * N.
        itself = positions.unsqueeze(-1) == positions.unsqueeze(-2)
        factors = decay_factors(pairwise_iou(boxes.unsqueeze(-2), boxes.unsqueeze(-3)), method, sigma, iou_threshold)
        factors = torch.where(itself, torch.zeros_like(factors), factors).reshape(-1, count)
        row_of_problem = (torch.ones_like(first[:, 0], dtype=torch.int64).cumsum(0) - 1) * (positions[:, -1] + 1)
    # [P, 1, N]: a pick's index is [P, 1], which Gather and the final Concat take without an
    # Unsqueeze per pick.
    current, picked = first.unsqueeze(1), []
    for _ in range(picks):
        best = current.argmax(dim=-1)  # [P, 1]; argmax: the first of equal scores
        picked.append(best)
        if iou_table:
            factor = factors[best + row_of_problem[:, None]]  # Gather: [P, 1, N]
        else:
            best_box = boxes.gather(1, best[..., None].expand(-1, 1, 4))
            factor = decay_factors(pairwise_iou(best_box, boxes), method, sigma, iou_threshold)
            factor = torch.where(positions == best, torch.zeros_like(factor), factor).unsqueeze(1)
        current = current * factor
    picked = torch.cat(picked, dim=-1)  # [P, picks]
    scores = picked_scores(boxes, first, picked, method, sigma, iou_threshold)
    # A pick below the floor was made when nothing was left: -inf says so.
    scores = torch.where(scores >= floor, scores, torch.full_like(scores, -math.inf))
    return picked.reshape(*leading, picks), scores.reshape(*leading, picks)


def picked_scores(boxes: Tensor, first: Tensor, picked: Tensor, method: str, sigma: float,
                  iou_threshold: float) -> Tensor:
    """Each pick's score when it was picked: its first score times the factors of the picks before
    it, [P, picks]. A few ops once, where reading it at each pick cost two per pick. The product
    is taken in another order than the picks' running one, so it may differ in the last bit."""
    picked_boxes = boxes.gather(1, picked[..., None].expand(-1, -1, 4))  # [P, T, 4]
    order = torch.ones_like(picked).cumsum(-1) - 1
    products = []
    # Columns in blocks, so [P, T, block] stays within MAX_IOU_TABLE (one block in the graph).
    block = max(1, MAX_IOU_TABLE // picked.shape[-1])
    for start in range(0, picked.shape[-1], block):
        later = slice(start, start + block)
        overlap = pairwise_iou(picked_boxes.unsqueeze(-2), picked_boxes[:, later].unsqueeze(-3))  # [P, T, block]
        # A box picked again (once nothing is left) was zeroed by its own first pick.
        again = picked.unsqueeze(-1) == picked[:, later].unsqueeze(-2)
        factors = torch.where(again, torch.zeros_like(overlap), decay_factors(overlap, method, sigma, iou_threshold))
        earlier = order.unsqueeze(-1) < order[:, later].unsqueeze(-2)  # pick s came before pick t
        products.append(torch.where(earlier, factors, torch.ones_like(factors)).prod(dim=-2))
    return first.gather(1, picked) * torch.cat(products, dim=-1)


def decay_factors(overlap: Tensor, method: str, sigma: float, iou_threshold: float) -> Tensor:
    """What a box's score is multiplied by, given its IoU with the picked box: in [0, 1], never NaN.
    Two boxes of no area have an IoU of 0 / 0, counted as 0 (no overlap)."""
    overlap = torch.where(torch.isnan(overlap), torch.zeros_like(overlap), overlap)
    if method == "gaussian":
        return torch.exp(-(overlap * overlap) / sigma)
    return torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap)).clamp(min=0)


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
