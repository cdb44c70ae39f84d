"""Anchor boxes for every location of every feature map.

Each map has its own sizes and aspect ratios; every (ratio, size) pair gives one anchor per
location (the paper's default: 3 sizes x 3 ratios = 9). Anchors are centred on the top-left
pixel of each stride cell and their corners rounded, in torchvision's AnchorGenerator order
(location-major; within a location ratio-major, then size), so weights trained with either
library predict the same boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.errors import ConfigError


def cell_anchors(sizes: list[float], aspect_ratios: list[float]) -> Tensor:
    """The [A, 4] anchors around (0, 0) for one feature map; ratio = height / width."""
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    height_ratios = torch.sqrt(ratios)
    width_ratios = 1 / height_ratios
    widths = (width_ratios[:, None] * sizes_t[None, :]).view(-1)
    heights = (height_ratios[:, None] * sizes_t[None, :]).view(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    def __init__(self, sizes: list[list[float]], aspect_ratios: list[list[float]]):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ConfigError(
                f"anchors: {len(sizes)} lists of sizes but {len(aspect_ratios)} lists of aspect ratios; "
                "give one of each per feature map"
            )
        self.sizes = [list(s) for s in sizes]
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, batch_shape: tuple[int, int], feature_maps: list[Tensor]) -> Tensor:
        """All anchors [sum(H_l * W_l * A_l), 4] of one padded image of size batch_shape (H, W);
        every image of the batch shares them."""
        if len(feature_maps) != len(self.cell_anchors):
            raise ConfigError(
                f"anchors: {len(self.cell_anchors)} anchor sets configured but the backbone returns "
                f"{len(feature_maps)} feature maps; set model.anchors.sizes/aspect_ratios to one list per map"
            )
        return torch.cat([grid_anchors(base, feature_map, batch_shape) for feature_map, base
                          in zip(feature_maps, self.cell_anchors)])


def grid_anchors(base: Tensor, feature_map: Tensor, batch_shape: tuple) -> Tensor:
    """`base` [A, 4] shifted to every cell of `feature_map` [N, C, H, W]: [H * W * A, 4], the
    stride being padded image size // map size (floor, as torchvision, for an FPN's extra level).
    `batch_shape` holds ints, or 0-d tensors when the export traces it (sizes stay dynamic)."""
    device = feature_map.device
    if isinstance(batch_shape[0], Tensor):
        grid_height, grid_width = torch._shape_as_tensor(feature_map)[-2:]
        stride_y = (batch_shape[0] // grid_height).to(torch.int32)
        stride_x = (batch_shape[1] // grid_width).to(torch.int32)
    else:
        grid_height, grid_width = feature_map.shape[-2:]
        stride_y, stride_x = batch_shape[0] // grid_height, batch_shape[1] // grid_width
    shifts_x = torch.arange(grid_width, dtype=torch.int32, device=device) * stride_x
    shifts_y = torch.arange(grid_height, dtype=torch.int32, device=device) * stride_y
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    base = base.to(dtype=feature_map.dtype, device=device)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)
