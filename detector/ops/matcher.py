"""Anchor matching in plain torch, chunk by chunk: torchvision's ``Matcher`` without the
[G, N] IoU matrix.

torchvision's ``Matcher(high, low, allow_low_quality)(box_iou(gt, boxes))`` needs the whole
[G, N] matrix (about 9 floats per pair inside ``box_iou``): 7 GB for 200k anchors x 1,000 GT.
Here boxes are taken ``chunk`` at a time, so memory grows with N + chunk x G:

1. per chunk: each box's best GT (``max`` over GT, first index on ties, NaN wins, exactly as
   ``Tensor.max(dim=0)``) and each GT's best IoU within the chunk;
2. the GT's best IoU over all boxes is the max of its per-chunk maxima;
3. low-quality pass: only chunks whose maximum for some GT equals that GT's overall best can
   hold its "best boxes" (ties included), so only those (chunk, GT) pairs are recomputed.
"""
import torch
from torch import Tensor

from detector.ops.boxes import box_iou_reference
from detector.errors import InputError

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2

# About 4 floats per pair live at once in box_iou_reference: 2**20 pairs is ~16 MB per chunk.
PAIRS_PER_CHUNK = 1 << 20


def boxes_per_chunk(num_gt: int, pairs_per_chunk: int = PAIRS_PER_CHUNK) -> int:
    """How many boxes one chunk holds so that a chunk has about ``pairs_per_chunk`` IoUs."""
    return max(1, pairs_per_chunk // max(num_gt, 1))


def check_thresholds(high: float, low: float) -> None:
    if low > high:
        raise InputError(f"low threshold {low} must be <= high threshold {high} (as torchvision's Matcher)")


def apply_thresholds(best_iou: Tensor, best_gt: Tensor, high: float, low: float) -> Tensor:
    """torchvision's labelling of each box's best match: GT index if IoU >= high, -1 below
    ``low``, -2 in between (NaN compares false to both and keeps its GT, as in torchvision)."""
    matches = best_gt.to(torch.int64, copy=True)
    matches[best_iou < low] = BELOW_LOW_THRESHOLD
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN_THRESHOLDS
    return matches


def match_chunked(
    gt_boxes: Tensor,
    boxes: Tensor,
    high: float = 0.7,
    low: float = 0.3,
    allow_low_quality: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """``Matcher(high, low, allow_low_quality)(box_iou(gt_boxes, boxes))``, value for value,
    computed over chunks of ``chunk_size`` boxes (default: about 2**20 IoUs per chunk).

    Returns int64 [N]. No GT: every box is -1 (torchvision raises there). No boxes: empty.
    """
    check_thresholds(high, low)
    num_gt, num_boxes = gt_boxes.shape[0], boxes.shape[0]
    if num_gt == 0 or num_boxes == 0:
        return torch.full((num_boxes,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=boxes.device)
    chunk = chunk_size or boxes_per_chunk(num_gt)
    starts = range(0, num_boxes, chunk)

    # Results go into buffers allocated up front: small tensors kept between chunks would
    # split the freed chunk-sized blocks and make the allocator grow by a chunk per chunk.
    iou_dtype = box_iou_reference(gt_boxes[:1], boxes[:1]).dtype
    best_iou = torch.empty(num_boxes, dtype=iou_dtype, device=boxes.device)
    best_gt = torch.empty(num_boxes, dtype=torch.int64, device=boxes.device)
    chunk_gt_max = torch.empty((len(starts), num_gt), dtype=iou_dtype, device=boxes.device)
    for chunk_index, start in enumerate(starts):
        stop = min(start + chunk, num_boxes)
        iou = box_iou_reference(gt_boxes, boxes[start:stop])  # [G, chunk]
        torch.max(iou, dim=0, out=(best_iou[start:stop], best_gt[start:stop]))
        if allow_low_quality:
            torch.amax(iou, dim=1, out=chunk_gt_max[chunk_index])
        del iou

    matches = apply_thresholds(best_iou, best_gt, high, low)
    if allow_low_quality:
        gt_max = chunk_gt_max.amax(dim=0)  # NaN anywhere in a GT's row makes it NaN, as torch.max
        holds_best = chunk_gt_max == gt_max  # NaN never equals: such a GT has no best boxes, as in torchvision
        for chunk_index, gt_indices in _group_by_chunk(holds_best):
            start = starts[chunk_index]
            iou = box_iou_reference(gt_boxes[gt_indices], boxes[start : start + chunk])
            is_best = (iou == gt_max[gt_indices, None]).any(dim=0)
            box_indices = start + torch.nonzero(is_best).squeeze(1)
            matches[box_indices] = best_gt[box_indices]
    return matches


def _group_by_chunk(holds_best: Tensor) -> list[tuple[int, Tensor]]:
    """(chunk index, GT indices whose overall best IoU occurs in that chunk) for each such chunk."""
    chunk_ids, gt_ids = torch.nonzero(holds_best, as_tuple=True)
    if chunk_ids.numel() == 0:
        return []
    chunks, counts = torch.unique_consecutive(chunk_ids, return_counts=True)
    return list(zip(chunks.tolist(), torch.split(gt_ids, counts.tolist())))
