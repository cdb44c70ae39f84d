"""Segmented batched NMS: every (image, class) of a batch in one launch of each NMS kernel.

torchvision's ``batched_nms`` either loops over classes (one NMS per class, many small
launches) or shifts each class's boxes far apart and runs one NMS over all (N x N work, and
the shifted coordinates round differently). Here a segment is an (image, class) pair: boxes
are sorted by segment, each segment gets its own 64-aligned run of blocks, and the kernels of
bitmask_nms.py only compute tiles inside a segment, on the original coordinates.
"""
import torch
from torch import Tensor

from detector.ops.triton.bitmask_nms import check_nms_inputs, nms_by_segment
from detector.errors import InputError


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, image_idxs: Tensor | None = None
) -> Tensor:
    """NMS independently per class ``idxs`` (and per image ``image_idxs`` when given).

    Without ``image_idxs``: the indices kept by ``torchvision.ops.batched_nms`` (per class, on
    the original coordinates), sorted by decreasing score, equal scores in input order.
    With ``image_idxs``: sorted by image, then by decreasing score, i.e. the per-image results
    of ``batched_nms`` concatenated in image order (as indices into the flat inputs).
    """
    boxes = check_nms_inputs(boxes, scores)
    for name, key in (("idxs", idxs), ("image_idxs", image_idxs)):
        if key is not None and (key.dim() != 1 or key.shape[0] != boxes.shape[0]):
            raise InputError(f"{name} must be [N] for N = {boxes.shape[0]} boxes, got shape {tuple(key.shape)}")
    segment_keys = [idxs] if image_idxs is None else [image_idxs, idxs]
    kept = nms_by_segment(boxes, scores, segment_keys, iou_threshold)
    # Segment order -> decreasing score (ties by index), then by image when there are images.
    kept = torch.sort(kept).values
    kept = kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    if image_idxs is not None:
        kept = kept[torch.sort(image_idxs[kept], stable=True).indices]
    return kept
