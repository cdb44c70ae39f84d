"""Tiled IoU: the [N, M] matrix of ``torchvision.ops.box_iou``, bit for bit.

Bit-for-bit equality with torch needs three things: the same operation order as torchvision's
``_box_inter_union`` (``pairwise_iou`` below), an IEEE round-to-nearest division
(``div_rn``: Triton's ``/`` is an approximate division on NVIDIA GPUs), and no fused
multiply-adds (launch with ``enable_fp_fusion=False``).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from detector.ops.triton.inputs import as_float32_boxes, check_device

BLOCK_ROWS = 64
BLOCK_COLS = 64


@triton.jit
def pairwise_iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU of boxes a and b (broadcast against each other) in torchvision's operation order:
    areas, clamped intersection width x height, union = (area_a + area_b) - inter, inter / union.
    Zero-area pairs give 0 / 0 = NaN, as in torchvision."""
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    width = tl.maximum(tl.minimum(ax2, bx2) - tl.maximum(ax1, bx1), 0.0)
    height = tl.maximum(tl.minimum(ay2, by2) - tl.maximum(ay1, by1), 0.0)
    inter = width * height
    union = area_a + area_b - inter
    return tl.math.div_rn(inter, union)


@triton.jit
def load_boxes(boxes_ptr, index, valid):
    """x1, y1, x2, y2 of the boxes at ``index`` (rows of 4 contiguous floats); 0 where not valid."""
    x1 = tl.load(boxes_ptr + index * 4 + 0, mask=valid, other=0.0)
    y1 = tl.load(boxes_ptr + index * 4 + 1, mask=valid, other=0.0)
    x2 = tl.load(boxes_ptr + index * 4 + 2, mask=valid, other=0.0)
    y2 = tl.load(boxes_ptr + index * 4 + 3, mask=valid, other=0.0)
    return x1, y1, x2, y2


@triton.jit
def _box_iou_kernel(boxes1_ptr, boxes2_ptr, iou_ptr, n, m, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    # One program per [BLOCK_ROWS, BLOCK_COLS] tile, flattened to one grid axis (no 65k limit).
    pid = tl.program_id(0)
    col_tiles = (m + BLOCK_COLS - 1) // BLOCK_COLS
    rows = (pid // col_tiles) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = (pid % col_tiles) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_ok = rows < n
    col_ok = cols < m
    ax1, ay1, ax2, ay2 = load_boxes(boxes1_ptr, rows, row_ok)
    bx1, by1, bx2, by2 = load_boxes(boxes2_ptr, cols, col_ok)
    iou = pairwise_iou(
        ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]
    )
    offsets = rows.to(tl.int64)[:, None] * m + cols[None, :]
    tl.store(iou_ptr + offsets, iou, mask=row_ok[:, None] & col_ok[None, :])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, M] float32 IoU of two sets of xyxy float32 boxes, equal to torchvision's box_iou."""
    boxes1 = as_float32_boxes(boxes1, "boxes1")
    boxes2 = as_float32_boxes(boxes2, "boxes2")
    check_device(_box_iou_kernel, boxes1, boxes2)
    n, m = boxes1.shape[0], boxes2.shape[0]
    iou = torch.empty((n, m), dtype=torch.float32, device=boxes1.device)
    if n == 0 or m == 0:
        return iou
    grid = (triton.cdiv(n, BLOCK_ROWS) * triton.cdiv(m, BLOCK_COLS),)
    _box_iou_kernel[grid](boxes1, boxes2, iou, n, m, BLOCK_ROWS, BLOCK_COLS, enable_fp_fusion=False)
    return iou
