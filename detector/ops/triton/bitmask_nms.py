"""Bitmask NMS on the device, equal to ``torchvision.ops.nms``; segment-aware so the same two
kernels run batched NMS (see segmented_nms.py) in one launch each.

Layout: boxes are stable-sorted by decreasing score inside each segment (a plain ``nms`` is
one segment), and every segment starts at a multiple of 64 in a padded buffer, so a 64-box
block never straddles two segments.

1. ``_suppression_mask_kernel``: for block i and a later block j of the same segment,
   ``mask[row, j - i]`` is a 64-bit word whose bit c says "row suppresses box 64 * j + c":
   ``iou > threshold`` and c after the row (upper triangle only). Tiles of different
   segments are never computed or stored.
2. ``_keep_from_mask_kernel``: one program per segment walks its blocks in score order, as
   torchvision's ``gather_keep_from_mask``: resolve the 64 boxes of a block against its own
   word, then OR the kept rows' words into the "removed" words of the later blocks. The mask
   never leaves the device; the host only learns how many boxes were kept.

Exactness: the IoU is torchvision's (tiled_iou.py) and the comparison is ``iou > threshold`` in
float32, with the threshold rounded as the reference does it: CUDA torchvision compares
against ``float(threshold)``; CPU torchvision compares the float IoU with the double
threshold, i.e. against the largest float32 <= threshold. Stable sort: equal scores keep
input order. Zero-area boxes give IoU 0 or NaN, never above the threshold. Checked against
CPU torchvision only so far: CUDA torchvision's IoU is compiled by nvcc, which may contract
``area_a + area_b - inter`` into an FMA; should the GPU benchmark ever report a mismatch,
that rounding is the first suspect.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from detector.ops.triton.inputs import as_float32_boxes, check_device
from detector.ops.triton.reduce import sum_along
from detector.ops.triton.tiled_iou import load_boxes, pairwise_iou
from detector.errors import InputError, KernelError

BOXES_PER_WORD = 64
FOLD_WORDS = 256  # later blocks folded per step of the keep kernel: few steps, 2 words a thread


@triton.jit
def _suppression_mask_kernel(
    boxes_ptr,  # [P, 4] float32: sorted and padded
    block_end_ptr,  # [B] int32: end (exclusive) of the valid boxes of the block's segment
    block_last_ptr,  # [B] int32: last block of the block's segment
    mask_ptr,  # [P, mask_width] int64, column s = block offset j - i
    threshold,
    mask_width,
):
    block = tl.program_id(0)
    offset = tl.program_id(1)
    other = block + offset
    if other <= tl.load(block_last_ptr + block):
        end = tl.load(block_end_ptr + block)
        lanes = tl.arange(0, 64)
        rows = block * 64 + lanes
        cols = other * 64 + lanes
        ax1, ay1, ax2, ay2 = load_boxes(boxes_ptr, rows, rows < end)
        bx1, by1, bx2, by2 = load_boxes(boxes_ptr, cols, cols < end)
        iou = pairwise_iou(
            ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]
        )
        suppress = (iou > threshold) & (cols[None, :] > rows[:, None]) & (cols[None, :] < end)
        bits = tl.where(suppress, tl.full([1, 64], 1, tl.int64) << lanes.to(tl.int64)[None, :], 0)
        words = sum_along(bits, 1)  # distinct bits: the sum is the OR (and wraps into bit 63)
        tl.store(mask_ptr + rows.to(tl.int64) * mask_width + offset, words)


@triton.jit
def _keep_from_mask_kernel(
    mask_ptr,  # [P, mask_width] int64 from _suppression_mask_kernel
    segment_first_block_ptr,  # [S] int32
    segment_blocks_ptr,  # [S] int32
    segment_end_ptr,  # [S] int32: end (exclusive) of the segment's valid boxes
    removed_ptr,  # [B] int64 zeros: scratch, bit c of word j = box 64 * j + c is suppressed
    keep_ptr,  # [P] int8 out
    mask_width,
    FOLD_WORDS: tl.constexpr,
):
    segment = tl.program_id(0)
    block = tl.load(segment_first_block_ptr + segment)
    stop = block + tl.load(segment_blocks_ptr + segment)
    end = tl.load(segment_end_ptr + segment)
    lanes = tl.arange(0, 64)
    lane_bits = tl.full([64], 1, tl.int64) << lanes.to(tl.int64)
    # `while` loops, not range(loaded value): Triton 3.6's interpreter cannot take the latter.
    while block < stop:
        rows = block * 64 + lanes
        # Padding slots count as removed, so they are never kept.
        removed = tl.load(removed_ptr + block, volatile=True)
        removed = removed | sum_along(tl.where(rows < end, 0, lane_bits), 0)
        # Greedy in score order inside the block: a box survives if no kept box before it
        # suppressed it; if it survives, what it suppresses is removed too. The 64 words are
        # independent scalar loads issued up front; the chain itself is register arithmetic.
        for r in tl.static_range(64):
            row = block * 64 + r
            word = tl.load(mask_ptr + row.to(tl.int64) * mask_width, mask=row < end, other=0)
            alive = ((removed >> r) & 1) == 0
            removed = tl.where(alive, removed | word, removed)
        kept = ((removed >> lanes.to(tl.int64)) & 1) == 0
        tl.store(keep_ptr + rows, kept.to(tl.int8))
        # Fold what the kept rows suppress into the removed words of the later blocks of the
        # segment: 64 independent row loads (no traffic for rows not kept) OR-ed lane by lane.
        later_blocks = stop - block
        fold_start = tl.full([], 1, tl.int32)
        while fold_start < later_blocks:
            offsets = fold_start + tl.arange(0, FOLD_WORDS)
            in_segment = offsets < later_blocks
            folded = tl.full([FOLD_WORDS], 0, tl.int64)
            for r in tl.static_range(64):
                row_kept = ((removed >> r) & 1) == 0
                row_start = mask_ptr + (block * 64 + r).to(tl.int64) * mask_width
                folded = folded | tl.load(row_start + offsets, mask=in_segment & row_kept, other=0)
            previous = tl.load(removed_ptr + block + offsets, mask=in_segment, other=0)
            tl.store(removed_ptr + block + offsets, previous | folded, mask=in_segment)
            fold_start += FOLD_WORDS
        # The next block reads its removed word, written by other threads of this program.
        tl.debug_barrier()
        block += 1


def threshold_as_float32(iou_threshold: float, device: torch.device) -> float:
    """The float32 t such that ``iou > t`` in float32 decides as the reference does (see module doc)."""
    return _threshold_as_float32(float(iou_threshold), device.type == "cuda")


@functools.lru_cache(maxsize=64)
def _threshold_as_float32(iou_threshold: float, on_cuda: bool) -> float:
    exact = torch.tensor(iou_threshold, dtype=torch.float64)
    rounded = exact.float()
    if not on_cuda and rounded.double() > exact:
        # CPU torchvision: float iou > double threshold  <=>  iou > largest float32 <= threshold.
        rounded = torch.nextafter(rounded, torch.tensor(float("-inf")))
    return rounded.item()


class SegmentLayout(NamedTuple):
    """Where the sorted boxes go in the padded buffer: every segment starts on a 64-box block."""

    position: Tensor  # [N] slot of each sorted box
    num_blocks: int
    mask_width: int  # blocks in the largest segment: the mask's row length in words
    block_end: Tensor  # [B] int32: end (exclusive) of the valid slots of the block's segment
    block_last: Tensor  # [B] int32: last block of the block's segment
    segment_first_block: Tensor  # [S] int32
    segment_blocks: Tensor  # [S] int32
    segment_end: Tensor  # [S] int32


def one_segment_layout(num_boxes: int, device: torch.device) -> SegmentLayout:
    """Plain NMS: one segment, known without looking at the data (no host sync)."""
    num_blocks = (num_boxes + BOXES_PER_WORD - 1) // BOXES_PER_WORD

    def filled(length: int, value: int) -> Tensor:
        return torch.full((length,), value, dtype=torch.int32, device=device)

    return SegmentLayout(
        position=torch.arange(num_boxes, device=device),
        num_blocks=num_blocks,
        mask_width=num_blocks,
        block_end=filled(num_blocks, num_boxes),
        block_last=filled(num_blocks, num_blocks - 1),
        segment_first_block=filled(1, 0),
        segment_blocks=filled(1, num_blocks),
        segment_end=filled(1, num_boxes),
    )


def segment_layout(sorted_keys: list[Tensor], device: torch.device) -> SegmentLayout:
    """Segments are the runs of equal keys in sorted order; each gets ceil(count / 64) blocks."""
    num_boxes = sorted_keys[0].shape[0]
    starts_segment = torch.zeros(num_boxes, dtype=torch.bool, device=device)
    starts_segment[0] = True
    for key in sorted_keys:
        starts_segment[1:] |= key[1:] != key[:-1]
    segment_start = torch.nonzero(starts_segment).squeeze(1)
    segment_count = torch.diff(segment_start, append=torch.tensor([num_boxes], device=device))
    segment_blocks = (segment_count + BOXES_PER_WORD - 1) // BOXES_PER_WORD
    segment_first_block = torch.cumsum(segment_blocks, 0) - segment_blocks
    segment_end = segment_first_block * BOXES_PER_WORD + segment_count
    num_blocks, mask_width = (int(v) for v in torch.stack([segment_blocks.sum(), segment_blocks.max()]).tolist())
    segment_of_box = torch.cumsum(starts_segment.to(torch.int64), 0) - 1
    shift = segment_first_block * BOXES_PER_WORD - segment_start  # slot - sorted index, per segment
    block_segment = torch.repeat_interleave(torch.arange(len(segment_start), device=device), segment_blocks)
    return SegmentLayout(
        position=shift[segment_of_box] + torch.arange(num_boxes, device=device),
        num_blocks=num_blocks,
        mask_width=mask_width,
        block_end=segment_end[block_segment].to(torch.int32),
        block_last=(segment_first_block + segment_blocks - 1)[block_segment].to(torch.int32),
        segment_first_block=segment_first_block.to(torch.int32),
        segment_blocks=segment_blocks.to(torch.int32),
        segment_end=segment_end.to(torch.int32),
    )


def nms_by_segment(boxes: Tensor, scores: Tensor, segment_keys: list[Tensor], iou_threshold: float) -> Tensor:
    """Kept indices of NMS run independently inside each segment (boxes with equal values in
    every tensor of ``segment_keys``), ordered by segment (lexicographic on the keys) and then
    by decreasing score, equal scores in input order. No keys: one segment (plain NMS)."""
    device = boxes.device
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if num_boxes >= 2**31 // BOXES_PER_WORD:
        raise KernelError(f"too many boxes for one NMS call: {num_boxes}")

    # Sort by (segment keys..., decreasing score, input index) with stable sorts, last key first.
    order = torch.sort(scores, descending=True, stable=True).indices
    for key in reversed(segment_keys):
        order = order[torch.sort(key[order], stable=True).indices]
    if segment_keys:
        layout = segment_layout([key[order] for key in segment_keys], device)
    else:
        layout = one_segment_layout(num_boxes, device)

    slots = layout.num_blocks * BOXES_PER_WORD
    padded_boxes = torch.zeros((slots, 4), dtype=torch.float32, device=device)
    padded_boxes[layout.position] = boxes[order]
    mask = torch.empty((slots, layout.mask_width), dtype=torch.int64, device=device)
    threshold = threshold_as_float32(iou_threshold, device)
    _suppression_mask_kernel[(layout.num_blocks, layout.mask_width)](
        padded_boxes, layout.block_end, layout.block_last, mask, threshold, layout.mask_width, enable_fp_fusion=False
    )
    removed = torch.zeros(layout.num_blocks, dtype=torch.int64, device=device)
    keep = torch.empty(slots, dtype=torch.int8, device=device)
    _keep_from_mask_kernel[(len(layout.segment_blocks),)](
        mask,
        layout.segment_first_block,
        layout.segment_blocks,
        layout.segment_end,
        removed,
        keep,
        layout.mask_width,
        FOLD_WORDS,
    )
    return order[keep[layout.position].bool()]


def check_nms_inputs(boxes: Tensor, scores: Tensor) -> Tensor:
    boxes = as_float32_boxes(boxes, "boxes")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise InputError(f"scores must be [N] for N = {boxes.shape[0]} boxes, got shape {tuple(scores.shape)}")
    check_device(_suppression_mask_kernel, boxes, scores)
    return boxes


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the kept boxes sorted by decreasing score, equal to ``torchvision.ops.nms``."""
    boxes = check_nms_inputs(boxes, scores)
    return nms_by_segment(boxes, scores, [], iou_threshold)
