"""Box ops used by the detector: one dispatch point per op.

Every op takes ``backend="auto" | "triton" | "torchvision"`` (see backend.py): "auto" runs the
Triton kernels of ``detector/ops/triton/`` on float32 CUDA tensors when triton imports and the
kernel passed its first-call check (triton_check.py), and otherwise torchvision's C++ ops (IoU,
NMS) or a chunked pure-torch matcher. Every backend
returns exactly what torchvision returns (same bits, same indices, same order); the few
deliberate differences are listed in each docstring.
"""
import torch
import torchvision
from torch import Tensor

from detector.errors import BoxShapeError
from detector.ops.backend import dispatch, triton_kernels
from detector.ops.boxes import big_enough, box_area, clip_boxes_to_image, remove_small_boxes
from detector.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_chunked
from detector.ops import soft_suppression
from detector.ops.sparse_roi_align import roi_align
from detector.ops.soft_suppression import METHODS as SOFT_NMS_METHODS
from detector.ops.triton_check import TritonFallbackWarning

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "SOFT_NMS_METHODS",
    "TritonFallbackWarning",
    "batched_nms",
    "batched_soft_nms",
    "big_enough",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "match",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "soft_nms",
]


def _check(op: str, boxes: Tensor, scores: Tensor | None = None, name: str = "boxes") -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise BoxShapeError(f"ops.{op}: {name} must be [N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if scores is not None and tuple(scores.shape) != (boxes.shape[0],):
        raise BoxShapeError(f"ops.{op}: scores must be [N] for N = {boxes.shape[0]} boxes, got shape {tuple(scores.shape)}")


def box_iou(boxes1: Tensor, boxes2: Tensor, backend: str = "auto") -> Tensor:
    """IoU matrix [N, M] of two sets of xyxy boxes, equal to ``torchvision.ops.box_iou``."""
    _check("box_iou", boxes1, name="boxes1")
    _check("box_iou", boxes2, name="boxes2")
    return dispatch("box_iou", backend, (boxes1, boxes2), lambda: triton_kernels().box_iou(boxes1, boxes2),
                    lambda: torchvision.ops.box_iou(boxes1, boxes2))


def match(
    gt_boxes: Tensor,
    boxes: Tensor,
    high: float = 0.7,
    low: float = 0.3,
    allow_low_quality: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Match every box to a ground-truth box, exactly as torchvision's
    ``Matcher(high, low, allow_low_quality)(box_iou(gt_boxes, boxes))``.

    Returns int64 [N]: the matched GT index where IoU >= high, -1 where IoU < low, -2 in
    between; ties for a box's best GT go to the first GT. With ``allow_low_quality`` each GT's
    best box(es), ties included, keep their best GT even below ``high``. torchvision's quirk is
    kept: a GT that overlaps no box has best IoU 0, so every box with IoU 0 to it is one of its
    "best boxes" and keeps its own best GT (GT 0 for a box that overlaps no GT at all).

    Never builds the [G, N] IoU matrix: the Triton kernels recompute IoU tiles in registers,
    the torch path ("torchvision" backend) works in chunks of boxes (matcher.py).
    Differences from torchvision, which raises on empty inputs: no GT -> every box is -1
    (background); no boxes -> an empty tensor.
    """
    _check("match", gt_boxes, name="gt_boxes")
    _check("match", boxes)
    return dispatch("match", backend, (gt_boxes, boxes),
                    lambda: triton_kernels().match(gt_boxes, boxes, high, low, allow_low_quality),
                    lambda: match_chunked(gt_boxes, boxes, high, low, allow_low_quality))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str = "auto") -> Tensor:
    """Indices of the boxes kept by greedy NMS, sorted by decreasing score: exactly
    ``torchvision.ops.nms`` (equal scores keep input order, a box is suppressed only when its
    IoU with a kept box is strictly above ``iou_threshold``, zero-area boxes suppress nothing)."""
    _check("nms", boxes, scores)
    return dispatch("nms", backend, (boxes,), lambda: triton_kernels().nms(boxes, scores, iou_threshold),
                    lambda: torchvision.ops.nms(boxes, scores, iou_threshold))


def soft_nms(boxes: Tensor, scores: Tensor, method: str = "gaussian", sigma: float = 0.5,
             iou_threshold: float = 0.3, min_score: float = 1e-3, max_kept: int | None = None) -> tuple[Tensor, Tensor]:
    """Soft-NMS (soft_suppression.py): (kept indices, decayed scores), by decreasing decayed score."""
    _check("soft_nms", boxes, scores)
    return soft_suppression.soft_nms(boxes, scores, method, sigma, iou_threshold, min_score, max_kept)


def batched_soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, max_kept: int | None = None,
                     **options) -> tuple[Tensor, Tensor]:
    """Soft-NMS within each class of ``idxs`` (soft_suppression.py); options as ``soft_nms``."""
    _check("batched_soft_nms", boxes, scores)
    return soft_suppression.batched_soft_nms(boxes, scores, idxs, max_kept, **options)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    backend: str = "auto",
    image_idxs: Tensor | None = None,
) -> Tensor:
    """NMS applied independently for each value of ``idxs`` (a class), as
    ``torchvision.ops.batched_nms``: kept indices sorted by decreasing score.

    ``image_idxs`` (optional, [N]) runs a whole batch in one call: boxes of different images
    never suppress each other, and the result is sorted by image, then by decreasing score
    (the per-image results concatenated). The Triton backend does it in one launch per kernel.

    The Triton backend runs each class on its original coordinates, which is torchvision's
    per-class definition; torchvision itself shifts classes apart for small inputs
    (``_batched_nms_coordinate_trick``), and the shifted coordinates can round an IoU that
    sits on the threshold to the other side. That trick breaks down when a coordinate is inf,
    NaN or huge (the offsets overflow or swallow whole boxes, and nothing is suppressed): for
    such inputs the "torchvision" backend runs NMS class by class instead.
    """
    _check("batched_nms", boxes, scores)
    return dispatch("batched_nms", backend, (boxes,),
                    lambda: triton_kernels().batched_nms(boxes, scores, idxs, iou_threshold, image_idxs=image_idxs),
                    lambda: _batched_nms_per_image(boxes, scores, idxs, iou_threshold, image_idxs))


def _batched_nms_per_image(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                           image_idxs: Tensor | None) -> Tensor:
    if image_idxs is None:
        return _batched_nms_torchvision(boxes, scores, idxs, iou_threshold)
    kept = []
    for image in torch.unique(image_idxs):  # per image, as torchvision's RoIHeads does
        in_image = torch.nonzero(image_idxs == image).squeeze(1)
        kept.append(in_image[_batched_nms_torchvision(boxes[in_image], scores[in_image], idxs[in_image], iou_threshold)])
    return torch.cat(kept) if kept else torch.empty(0, dtype=torch.int64, device=boxes.device)


def _batched_nms_torchvision(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's batched_nms where its class-offset trick is sound, else NMS per class."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    largest_offset = (boxes.abs().max() + 1) * (idxs.max().abs() + 1)
    if bool(torch.isfinite(boxes).all()) and largest_offset < 2**24:  # offsets exact to ~1 float32 ulp
        return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    keep = torch.cat([in_class[torchvision.ops.nms(boxes[in_class], scores[in_class], iou_threshold)]
                      for in_class in (torch.nonzero(idxs == c).squeeze(1) for c in torch.unique(idxs))])
    return keep[scores[keep].sort(descending=True, stable=True).indices]
