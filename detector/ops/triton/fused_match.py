"""Fused anchor matcher: torchvision's ``Matcher(box_iou(gt, boxes))`` without the [G, N] matrix.

Two launches over blocks of boxes, each walking all GT in tiles and recomputing the IoU tile
in registers (same ``pairwise_iou`` as box_iou, so the same bits):

1. ``_best_gt_kernel``: each box's best IoU and GT with ``Tensor.max(dim=0)``'s rules (first
   index on ties, the first NaN wins) and each GT's best IoU over all boxes, merged across
   programs with an integer ``atomic_max`` on an order-preserving int32 key of the float.
2. ``_is_best_box_kernel``: flags the boxes whose IoU with some GT equals that GT's best
   (ties included: the low-quality matches).

Memory: O(N + G) besides the inputs. Thresholding (-1 / -2) runs in torch on the [N] best
IoUs, with torchvision's own comparisons.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from detector.ops.matcher import BELOW_LOW_THRESHOLD, apply_thresholds, check_thresholds
from detector.ops.triton.inputs import as_float32_boxes, check_device
from detector.ops.triton.reduce import max_along, min_along
from detector.ops.triton.tiled_iou import load_boxes, pairwise_iou
from detector.errors import KernelError

BLOCK_BOXES = 128
BLOCK_GT = 32
NAN_KEY = tl.constexpr(0x7FFFFFFF)  # above the key of +inf (0x7F800000): NaN is the largest, as in torch.max


@triton.jit
def ordered_key(x):
    """int32 key with key(a) < key(b) iff a < b for floats (-0 just below +0), any NaN above
    everything: integer max on keys is float max with torch's NaN rule. (Which zero wins does
    not matter: the low-quality pass compares floats, where -0 == +0.)"""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
    return tl.where(x != x, 0x7FFFFFFF, key)


@triton.jit
def float_from_key(key):
    """Inverse of ``ordered_key`` (the NaN key comes back as a NaN)."""
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _best_gt_kernel(
    gt_ptr, boxes_ptr, best_iou_ptr, best_gt_ptr, gt_max_key_ptr, num_gt, num_boxes,
    BLOCK_BOXES: tl.constexpr, BLOCK_GT: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_BOXES + tl.arange(0, BLOCK_BOXES)
    col_ok = cols < num_boxes
    bx1, by1, bx2, by2 = load_boxes(boxes_ptr, cols, col_ok)
    best = tl.full([BLOCK_BOXES], float("-inf"), tl.float32)
    best_gt = tl.full([BLOCK_BOXES], 0, tl.int32)
    gt_start = tl.full([], 0, tl.int32)
    while gt_start < num_gt:  # `while`, not range(num_gt): Triton 3.6's interpreter needs it
        rows = gt_start + tl.arange(0, BLOCK_GT)
        row_ok = rows < num_gt
        ax1, ay1, ax2, ay2 = load_boxes(gt_ptr, rows, row_ok)
        iou = pairwise_iou(
            ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]
        )  # [BLOCK_GT, BLOCK_BOXES]
        valid_row = row_ok[:, None]

        # Tile winner per box: the first NaN if any, else the first row holding the tile max.
        is_nan = (iou != iou) & valid_row
        has_nan = max_along(is_nan.to(tl.int32), 0) > 0
        finite = tl.where(valid_row & (iou == iou), iou, float("-inf"))
        tile_max = max_along(finite, 0)
        hit = tl.where(has_nan[None, :], is_nan, valid_row & (finite == tile_max[None, :]))
        tile_gt = min_along(tl.where(hit, rows[:, None], num_gt), 0)
        tile_best = tl.where(has_nan, float("nan"), tile_max)
        # torch.max(dim) replaces the running best when !(value <= best) and stops at a NaN.
        take = (~(tile_best <= best)) & (best == best)
        best = tl.where(take, tile_best, best)
        best_gt = tl.where(take, tile_gt, best_gt)

        # Each GT's best over this block of boxes, merged over blocks as an integer max.
        keys = tl.where(valid_row & col_ok[None, :], ordered_key(iou), -2147483647 - 1)
        tl.atomic_max(gt_max_key_ptr + rows, max_along(keys, 1), mask=row_ok)
        gt_start += BLOCK_GT
    tl.store(best_iou_ptr + cols, best, mask=col_ok)
    tl.store(best_gt_ptr + cols, best_gt, mask=col_ok)


@triton.jit
def _is_best_box_kernel(
    gt_ptr, boxes_ptr, gt_max_key_ptr, is_best_ptr, num_gt, num_boxes,
    BLOCK_BOXES: tl.constexpr, BLOCK_GT: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_BOXES + tl.arange(0, BLOCK_BOXES)
    col_ok = cols < num_boxes
    bx1, by1, bx2, by2 = load_boxes(boxes_ptr, cols, col_ok)
    is_best = tl.full([BLOCK_BOXES], 0, tl.int32)
    gt_start = tl.full([], 0, tl.int32)
    while gt_start < num_gt:
        rows = gt_start + tl.arange(0, BLOCK_GT)
        row_ok = rows < num_gt
        ax1, ay1, ax2, ay2 = load_boxes(gt_ptr, rows, row_ok)
        iou = pairwise_iou(
            ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]
        )
        gt_max = float_from_key(tl.load(gt_max_key_ptr + rows, mask=row_ok, other=NAN_KEY))
        # Float equality, as torchvision's `quality == max`: a NaN best has no ties.
        ties = (iou == gt_max[:, None]) & row_ok[:, None]
        is_best = tl.maximum(is_best, max_along(ties.to(tl.int32), 0))
        gt_start += BLOCK_GT
    tl.store(is_best_ptr + cols, is_best.to(tl.int8), mask=col_ok)


def match(
    gt_boxes: Tensor, boxes: Tensor, high: float = 0.7, low: float = 0.3, allow_low_quality: bool = True
) -> Tensor:
    """``Matcher(high, low, allow_low_quality)(box_iou(gt_boxes, boxes))`` as int64 [N];
    no GT: all -1; no boxes: empty."""
    check_thresholds(high, low)
    gt_boxes = as_float32_boxes(gt_boxes, "gt_boxes")
    boxes = as_float32_boxes(boxes, "boxes")
    check_device(_best_gt_kernel, gt_boxes, boxes)
    num_gt, num_boxes = gt_boxes.shape[0], boxes.shape[0]
    device = boxes.device
    if num_gt == 0 or num_boxes == 0:
        return torch.full((num_boxes,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)
    if num_gt >= 2**31 - 1:
        raise KernelError(f"too many GT boxes for int32 indices: {num_gt}")

    grid = (triton.cdiv(num_boxes, BLOCK_BOXES),)
    best_iou = torch.empty(num_boxes, dtype=torch.float32, device=device)
    best_gt = torch.empty(num_boxes, dtype=torch.int32, device=device)
    gt_max_key = torch.full((num_gt,), -(2**31), dtype=torch.int32, device=device)
    _best_gt_kernel[grid](
        gt_boxes, boxes, best_iou, best_gt, gt_max_key, num_gt, num_boxes, BLOCK_BOXES, BLOCK_GT, enable_fp_fusion=False
    )
    matches = apply_thresholds(best_iou, best_gt, high, low)
    if allow_low_quality:
        is_best = torch.empty(num_boxes, dtype=torch.int8, device=device)
        _is_best_box_kernel[grid](
            gt_boxes, boxes, gt_max_key, is_best, num_gt, num_boxes, BLOCK_BOXES, BLOCK_GT, enable_fp_fusion=False
        )
        matches = torch.where(is_best.bool(), best_gt.to(torch.int64), matches)
    return matches
