"""Triton kernels for the box ops: CUDA at run time, CPU tensors under ``TRITON_INTERPRET=1``.

One file per kernel family: tiled_iou (IoU matrix), fused_match (anchor matcher),
bitmask_nms (NMS, segment-aware), segmented_nms (batched NMS over images x classes).
Importing this package imports triton; ``detector.ops`` does so only when a Triton backend
is used, so ``import detector`` works where triton is missing. ``TRITON_INTERPRET`` is read
when these kernels are defined, i.e. at the first import of this package (whether triton
itself was imported earlier does not matter: see reduce.py).
"""
from detector.ops.triton.bitmask_nms import nms
from detector.ops.triton.fused_match import match
from detector.ops.triton.segmented_nms import batched_nms
from detector.ops.triton.tiled_iou import box_iou

__all__ = ["batched_nms", "box_iou", "match", "nms"]
