"""Matching that survives running out of GPU memory.

One image with thousands of ground-truth boxes can make matching run out of CUDA memory (the
fused kernel needs no IoU matrix, but the rest of a large training step may hold the memory).
Rather than kill a long run, `match_with_fallback` empties the CUDA cache and retries, then
matches on the CPU, warning with the image and the number of boxes each time.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from detector import ops


class MatchMemoryWarning(UserWarning):
    """Matching ran out of device memory and was retried (cache emptied, or on the CPU)."""


def match_with_fallback(gt_boxes: Tensor, boxes: Tensor, high: float, low: float, allow_low_quality: bool,
                        image: object = "?") -> Tensor:
    """`ops.match`, retried after an out-of-memory error: once after emptying the CUDA cache,
    then on the CPU (the result comes back on the input's device). `image` names the image in
    the warnings. An out-of-memory error on the CPU itself is raised."""
    try:
        return ops.match(gt_boxes, boxes, high, low, allow_low_quality)
    except torch.OutOfMemoryError:
        pass
    what = f"image {image}: matching {len(gt_boxes)} ground-truth boxes x {len(boxes)} boxes"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        matched = ops.match(gt_boxes, boxes, high, low, allow_low_quality)
        warnings.warn(f"{what} ran out of memory; it worked after emptying the CUDA cache", MatchMemoryWarning)
        return matched
    except torch.OutOfMemoryError:
        if boxes.device.type == "cpu":
            raise
    warnings.warn(f"{what} ran out of {boxes.device} memory twice; matched on the CPU instead", MatchMemoryWarning)
    return ops.match(gt_boxes.cpu(), boxes.cpu(), high, low, allow_low_quality).to(boxes.device)
