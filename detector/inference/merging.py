"""One merge for detections of the same image seen several times: the tiles of sliced prediction
(inference/slicing.py) with the full-image pass beside them, and the views of test-time
augmentation (inference/tta.py). Each tile, pass or view is a *source*.

Greedy non-maximum merging (NMM), class-aware, on intersection-over-smaller (IoS) or IoU:
- boxes are taken by score, highest first; a box not yet merged keeps its place and absorbs the
  lower-scored boxes of its class that overlap it by more than `match_threshold`;
- only boxes of *other* sources merge (two boxes of one tile are two objects: the model's own NMS
  already kept them apart), and a keeper takes at most one box per source (its best);
- IoS for tiles: a tile that sees half an object gives a box inside the full one (IoS 1, IoU 0.5).
  IoU for views that each see the whole image: their boxes of one object agree closely, and IoS
  would fuse a small object with a larger one of its class around it;
- two pieces of an object wider than the tiles' overlap share only the overlap band, so pieces
  cut toward each other are matched along the seam instead (`matches`).

The merged box takes each side from the boxes that saw it: a side lying on a tile's inner edge
(`cut`) is where the tile cut the object, so it is used only when no box of the group saw that
side whole; otherwise the side is the score-weighted mean of those that did (as weighted box
fusion). A group whose boxes are all cut on a side (an object wider than the overlap) gets the
outermost cut edge on it (the union). The score is the keeper's, the best of the group; or, given
the number of sources `views` (TTA: every view sees every object), the sum of the group's scores
over `views`, a source that missed the object counting 0 (weighted box fusion's score): an
object all views agree on outranks one a single view saw.

SAHI's GREEDYNMM is the reference for the idea; this one finds its candidate pairs on tensors,
by a sweep over bands of rows and boxes sorted by x (`overlapping_pairs`), so the work grows
with the boxes near each other, not with N^2.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from detector.errors import InputError

OVERLAPS = ("ios", "iou")  # what a merge's match_threshold bounds: intersection over the smaller box, or over the union
CUT_TOLERANCE = 2.0  # pixels: a box side this close to an inner tile edge was cut there; cut pieces this close meet


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, sources: Tensor, cut: Tensor | None = None,
                     match_threshold: float = 0.5, overlap: str = "ios", views: int | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Merged (boxes [M, 4], scores [M], labels [M]), by score, highest first.

    boxes [N, 4] xyxy in one image's pixels; sources [N] ints (the tile, pass or view each box
    came from); cut [N, 4] bools: which sides (x1, y1, x2, y2) lie on an inner tile edge (None:
    none); overlap: "ios" or "iou", what `match_threshold` bounds; views: None, the group's
    score is the keeper's; else the sum of its scores / views (see the module docstring)."""
    if overlap not in OVERLAPS:
        raise InputError(f"merge overlap {overlap!r}: one of {', '.join(OVERLAPS)}")
    count = boxes.shape[0]
    if count == 0:
        return boxes.reshape(0, 4), scores.reshape(0), labels.reshape(0)
    boxes = boxes.float()
    cut = torch.zeros(count, 4, dtype=torch.bool, device=boxes.device) if cut is None else cut.bool()
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, scores, labels, sources, cut = boxes[order], scores[order], labels[order], sources[order], cut[order]
    first, second = overlapping_pairs(boxes, labels, sources, cut, match_threshold, overlap)  # first scores higher
    keeper = greedy_assignment(count, first.cpu().numpy(), second.cpu().numpy(), sources.cpu().numpy())
    return fuse_groups(boxes, scores, labels, cut, torch.from_numpy(keeper).to(boxes.device), views)


def overlapping_pairs(boxes: Tensor, labels: Tensor, sources: Tensor, cut: Tensor, threshold: float,
                      overlap: str = "ios") -> tuple[Tensor, Tensor]:
    """(first, second): the index pairs of boxes sorted by score (first < second), of one label
    and of different sources, that are one object (`matches`).

    Candidates come from a sweep, so the work grows with the boxes near each other, not with N^2:
    rows of the image are cut into bands as tall as the tallest box, so two boxes that meet start
    at most one band apart; a box goes into the band of its top edge and, as a visitor, into the
    next one. Within one (label, band), sorted by left edge, a box meets only the boxes that begin
    before it ends; a visitor meets only the band's own boxes."""
    device = boxes.device
    if boxes.shape[0] < 2:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    b = boxes.double()  # the sort key below packs label, band and x into one number
    band_height = float((b[:, 3] - b[:, 1]).max().clamp(min=0)) + CUT_TOLERANCE + 1
    top, left = b[:, 1] - b[:, 1].min(), b[:, 0] - b[:, 0].min()
    span = float((b[:, 2] - b[:, 0].min()).max()) + CUT_TOLERANCE + 1  # beyond any box's reach: blocks never meet
    band = torch.floor(top / band_height)
    _, label_rank = torch.unique(labels, return_inverse=True)
    block = label_rank.double() * (float(band.max()) + 2) + band
    index = torch.arange(len(b), device=device)
    entry_box = torch.cat([index, index])
    visitor = torch.cat([torch.zeros_like(index, dtype=torch.bool), torch.ones_like(index, dtype=torch.bool)])
    key = torch.cat([block, block + 1]) * span + torch.cat([left, left])
    order = torch.argsort(key, stable=True)
    key, entry_box, visitor = key[order], entry_box[order], visitor[order]
    reach = key + (b[entry_box, 2] - b[entry_box, 0]).clamp(min=0) + CUT_TOLERANCE
    counts = (torch.searchsorted(key, reach, right=True) - torch.arange(len(key), device=device) - 1).clamp(min=0)
    p = torch.repeat_interleave(torch.arange(len(key), device=device), counts)
    q = p + 1 + torch.arange(int(counts.sum()), device=device) - (torch.cumsum(counts, 0) - counts)[p]
    a, z = entry_box[p], entry_box[q]
    near = (~(visitor[p] & visitor[q]) & (sources[a] != sources[z])
            & (torch.minimum(boxes[a, 3], boxes[z, 3]) - torch.maximum(boxes[a, 1], boxes[z, 1]) >= -CUT_TOLERANCE))
    a, z = a[near], z[near]
    hit = matches(boxes[a], boxes[z], cut[a], cut[z], threshold, overlap)
    a, z = a[hit], z[hit]
    return torch.minimum(a, z), torch.maximum(a, z)


def matches(a: Tensor, b: Tensor, a_cut: Tensor, b_cut: Tensor, threshold: float, overlap: str = "ios") -> Tensor:
    """Bools, for boxes a [..., 4] and b [..., 4] paired by broadcasting: the pairs that are one
    object. Either their intersection over the smaller box (over their union, with
    overlap="iou") exceeds `threshold`, or two pieces cut toward each other (one on its right
    side, the other on its left, within CUT_TOLERANCE of meeting) overlap along the seam by more
    than `threshold` of the shorter (and likewise up/down): an object wider than the tiles'
    overlap is seen in two pieces that share only the overlap band, or just touch when the
    overlap is 0."""
    width = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    height = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    a_w, a_h = (a[..., 2] - a[..., 0]).clamp(min=1e-6), (a[..., 3] - a[..., 1]).clamp(min=1e-6)
    b_w, b_h = (b[..., 2] - b[..., 0]).clamp(min=1e-6), (b[..., 3] - b[..., 1]).clamp(min=1e-6)
    intersection = width.clamp(min=0) * height.clamp(min=0)
    a_area, b_area = a_w * a_h, b_w * b_h
    shared = intersection / (torch.minimum(a_area, b_area) if overlap == "ios" else a_area + b_area - intersection)
    along_y = height.clamp(min=0) / torch.minimum(a_h, b_h)  # overlap along a vertical seam
    along_x = width.clamp(min=0) / torch.minimum(a_w, b_w)
    # Sides: 0 left, 1 top, 2 right, 3 bottom.
    facing_x = ((a_cut[..., 2] & b_cut[..., 0]) | (a_cut[..., 0] & b_cut[..., 2])) & (width >= -CUT_TOLERANCE)
    facing_y = ((a_cut[..., 3] & b_cut[..., 1]) | (a_cut[..., 1] & b_cut[..., 3])) & (height >= -CUT_TOLERANCE)
    return ((shared > threshold) | (facing_x & (along_y > threshold)) | (facing_y & (along_x > threshold))
            | (facing_x & facing_y))


def greedy_assignment(count: int, first: np.ndarray, second: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """keeper[i]: the box (in score order) that box i merges into, itself for a keeper. Box i,
    if not merged yet, keeps and takes its unmerged partners, the best of each other source.
    Sequential by nature; a plain loop over the pairs (lists, not arrays: a few per box, where
    NumPy's per-call cost would dominate)."""
    keeper = list(range(count))
    if first.size == 0:
        return np.array(keeper)
    pairs = np.lexsort((second, first))  # by first, then by second (score order of the partner)
    source_of = sources.tolist()
    merged = bytearray(count)
    current, taken_sources, skip = -1, set(), False
    for box, partner in zip(first[pairs].tolist(), second[pairs].tolist()):
        if box != current:  # ascending: the highest score first
            current, taken_sources, skip = box, set(), merged[box]
        if skip or merged[partner] or source_of[partner] in taken_sources:
            continue
        taken_sources.add(source_of[partner])  # partners come best first: this is the source's best
        keeper[partner] = box
        merged[partner] = 1
    return np.array(keeper)


def fuse_groups(boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, keeper: Tensor, views: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One box per keeper: each side the score-weighted mean of the group's uncut sides, else
    the group's outermost cut side; the keeper's label, and its score (views None) or the
    group's score sum / views, by which the groups are then ordered."""
    count = boxes.shape[0]
    weight = scores.float()[:, None] * (~cut).float()  # [N, 4]
    weight_sum = torch.zeros(count, 4, device=boxes.device).index_add_(0, keeper, weight)
    weighted = torch.zeros(count, 4, device=boxes.device).index_add_(0, keeper, weight * boxes)
    index = keeper[:, None].expand(-1, 2)
    low = torch.full((count, 2), float("inf"), device=boxes.device).scatter_reduce_(0, index, boxes[:, :2], "amin")
    high = torch.full((count, 2), float("-inf"), device=boxes.device).scatter_reduce_(0, index, boxes[:, 2:], "amax")
    union = torch.cat([low, high], dim=1)
    fused = torch.where(weight_sum > 0, weighted / weight_sum.clamp(min=1e-12), union)
    alone = torch.bincount(keeper, minlength=count) == 1
    fused[alone] = boxes[alone]  # a box that merged with nothing comes out as it went in, to the bit
    kept = torch.nonzero(keeper == torch.arange(count, device=boxes.device)).flatten()  # still in score order
    if views is None:
        return fused[kept], scores[kept], labels[kept]
    group_scores = torch.zeros(count, device=boxes.device).index_add_(0, keeper, scores.float())[kept] / views
    order = torch.sort(group_scores, descending=True, stable=True).indices
    return fused[kept][order], group_scores[order].to(scores.dtype), labels[kept][order]
