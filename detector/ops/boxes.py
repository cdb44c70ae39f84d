"""Plain-torch box math in (x1, y1, x2, y2) pixel coordinates."""
import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int] | tuple[Tensor, Tensor]) -> Tensor:
    """Clamp boxes (..., 4) into an image of size (height, width): ints, or 0-d tensors when
    traced for export (the same clamps, with the size a graph input instead of a constant)."""
    height, width = size
    if isinstance(height, Tensor):
        x = torch.minimum(boxes[..., 0::2].clamp(min=0), width.to(boxes.dtype))
        y = torch.minimum(boxes[..., 1::2].clamp(min=0), height.to(boxes.dtype))
    else:
        x = boxes[..., 0::2].clamp(min=0, max=width)
        y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """Mask of boxes (..., 4) whose width and height are both >= min_size."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both >= min_size."""
    return torch.where(big_enough(boxes, min_size))[0]


def _upcast(t: Tensor) -> Tensor:
    # As torchvision does before multiplying: half -> float32, small ints -> int32.
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Dense [N, M] IoU, equal bit for bit to ``torchvision.ops.box_iou``.

    Every element goes through torchvision's ``_box_inter_union`` operations in the same
    order; only the layout differs: one [N, M] plane per coordinate instead of [N, M, 2]
    pairs, so the peak is about 4 floats per pair instead of about 9.
    """
    area1 = box_area(_upcast(boxes1))
    area2 = box_area(_upcast(boxes2))
    width = torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2]) - torch.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    width = _upcast(width).clamp_(min=0)
    height = torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3]) - torch.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    inter = width.mul_(_upcast(height).clamp_(min=0))
    del height
    union = (area1[:, None] + area2[None, :]).sub_(inter)
    return inter / union
