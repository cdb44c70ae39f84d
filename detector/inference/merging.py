"""One merge for detections of the same image seen several times: the tiles of sliced prediction
(inference/slicing.py), and the full-image pass beside them.

Greedy non-maximum merging (NMM), class-aware, on intersection-over-smaller (IoS):
- boxes are taken by score, highest first; a box not yet merged keeps its place and absorbs the
  lower-scored boxes of its class that overlap it with IoS > `match_threshold`;
- only boxes of *other* sources merge (two boxes of one tile are two objects: the model's own NMS
  already kept them apart), and a keeper takes at most one box per source (its best);
- IoS, not IoU: a tile that sees half an object gives a box inside the full one (IoS 1, IoU 0.5);
- two pieces of an object wider than the tiles' overlap share only the overlap band, so pieces
  cut toward each other are matched along the seam instead (`matches`).

The merged box takes each side from the boxes that saw it: a side lying on a tile's inner edge
(`cut`) is where the tile cut the object, so it is used only when no box of the group saw that
side whole; otherwise the side is the score-weighted mean of those that did (as weighted box
fusion). A group whose boxes are all cut on a side (an object wider than the overlap) gets the
outermost cut edge on it (the union). The score is the keeper's, the best of the group.

SAHI's GREEDYNMM is the reference for the idea; this one runs on tensors: candidate pairs come
from a sweep over boxes sorted by x (a box only meets boxes that start before it ends), so the
work grows with the number of overlapping pairs, not with N^2.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ROWS_PER_CHUNK = 256  # rows of the pairwise IoS computed at once (memory: rows x the boxes they can meet)
CUT_TOLERANCE = 2.0  # pixels: a box side this close to an inner tile edge was cut there; cut pieces this close meet


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, sources: Tensor, cut: Tensor | None = None,
                     match_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Merged (boxes [M, 4], scores [M], labels [M]), by score, highest first.

    boxes [N, 4] xyxy in one image's pixels; sources [N] ints (the tile or pass each box came
    from); cut [N, 4] bools: which sides (x1, y1, x2, y2) lie on an inner tile edge (None: none)."""
    count = boxes.shape[0]
    if count == 0:
        return boxes.reshape(0, 4), scores.reshape(0), labels.reshape(0)
    boxes = boxes.float()
    cut = torch.zeros(count, 4, dtype=torch.bool, device=boxes.device) if cut is None else cut.bool()
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, scores, labels, sources, cut = boxes[order], scores[order], labels[order], sources[order], cut[order]
    first, second = overlapping_pairs(boxes, labels, sources, cut, match_threshold)  # first scores higher
    keeper = greedy_assignment(count, first.cpu().numpy(), second.cpu().numpy(), sources.cpu().numpy())
    return fuse_groups(boxes, scores, labels, cut, torch.from_numpy(keeper).to(boxes.device))


def overlapping_pairs(boxes: Tensor, labels: Tensor, sources: Tensor, cut: Tensor, threshold: float
                      ) -> tuple[Tensor, Tensor]:
    """(first, second): the index pairs of boxes sorted by score (first < second), of one label
    and of different sources, that are one object (`matches`)."""
    firsts, seconds = [], []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        by_x = members[torch.argsort(boxes[members, 0], stable=True)]
        b, src, b_cut = boxes[by_x], sources[by_x], cut[by_x]
        for start in range(0, len(by_x), ROWS_PER_CHUNK):
            rows = slice(start, min(start + ROWS_PER_CHUNK, len(by_x)))
            # Sorted by left edge: the rows meet only boxes from `start` on that begin before the
            # rows' furthest right edge (earlier ones met them as rows).
            end = int(torch.searchsorted(b[:, 0].contiguous(), b[rows, 2].max() + CUT_TOLERANCE, right=True))
            if end <= start + 1:
                continue
            cols = slice(start, end)
            row_index = torch.arange(rows.start, rows.stop, device=b.device)[:, None]
            col_index = torch.arange(cols.start, cols.stop, device=b.device)[None, :]
            hit = (matches(b[rows], b[cols], b_cut[rows], b_cut[cols], threshold)
                   & (col_index > row_index) & (src[rows, None] != src[None, cols]))
            r, c = torch.nonzero(hit, as_tuple=True)
            a, z = by_x[r + rows.start], by_x[c + cols.start]  # back to score order
            firsts.append(torch.minimum(a, z))
            seconds.append(torch.maximum(a, z))
    if not firsts:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    return torch.cat(firsts), torch.cat(seconds)


def matches(a: Tensor, b: Tensor, a_cut: Tensor, b_cut: Tensor, threshold: float) -> Tensor:
    """[A, B] bools: box pairs that are one object. Either their intersection over the smaller box
    exceeds `threshold`, or two pieces cut toward each other (one on its right side, the other on
    its left, within CUT_TOLERANCE of meeting) overlap along the seam by more than `threshold` of
    the shorter (and likewise up/down): an object wider than the tiles' overlap is seen in two
    pieces that share only the overlap band, or just touch when the overlap is 0."""
    width = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    height = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    a_w, a_h = (a[:, 2] - a[:, 0]).clamp(min=1e-6), (a[:, 3] - a[:, 1]).clamp(min=1e-6)
    b_w, b_h = (b[:, 2] - b[:, 0]).clamp(min=1e-6), (b[:, 3] - b[:, 1]).clamp(min=1e-6)
    ios = width.clamp(min=0) * height.clamp(min=0) / torch.minimum(a_w[:, None] * a_h[:, None], b_w[None] * b_h[None])
    along_y = height.clamp(min=0) / torch.minimum(a_h[:, None], b_h[None])  # overlap along a vertical seam
    along_x = width.clamp(min=0) / torch.minimum(a_w[:, None], b_w[None])
    # Sides: 0 left, 1 top, 2 right, 3 bottom.
    facing_x = ((a_cut[:, None, 2] & b_cut[None, :, 0]) | (a_cut[:, None, 0] & b_cut[None, :, 2])) & (width >= -CUT_TOLERANCE)
    facing_y = ((a_cut[:, None, 3] & b_cut[None, :, 1]) | (a_cut[:, None, 1] & b_cut[None, :, 3])) & (height >= -CUT_TOLERANCE)
    return ((ios > threshold) | (facing_x & (along_y > threshold)) | (facing_y & (along_x > threshold))
            | (facing_x & facing_y))


def greedy_assignment(count: int, first: np.ndarray, second: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """keeper[i]: the box (in score order) that box i merges into, itself for a keeper. Box i,
    if not merged yet, keeps and takes its unmerged partners, the best of each other source."""
    keeper = np.arange(count)
    if first.size == 0:
        return keeper
    pairs = np.lexsort((second, first))  # by first, then by second (score order of the partner)
    first, second = first[pairs], second[pairs]
    starts = np.searchsorted(first, np.arange(count + 1))
    merged = np.zeros(count, dtype=bool)
    for box in np.unique(first):  # ascending: highest score first
        if merged[box]:
            continue
        partners = second[starts[box]:starts[box + 1]]
        partners = partners[~merged[partners]]
        if partners.size == 0:
            continue
        if partners.size > 1:
            _, best_per_source = np.unique(sources[partners], return_index=True)  # first = best scored
            partners = partners[best_per_source]
        taken = partners
        keeper[taken] = box
        merged[taken] = True
    return keeper


def fuse_groups(boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, keeper: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One box per keeper: each side the score-weighted mean of the group's uncut sides, else
    the group's outermost cut side; the keeper's score and label."""
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
    return fused[kept], scores[kept], labels[kept]
