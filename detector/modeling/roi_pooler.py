"""RoIAlign over one or several feature maps.

With a pyramid, each box is pooled from the level that suits its size (FPN paper, eq. 1):
level = floor(4 + log2(sqrt(area) / 224)), clamped to the levels present. A map's scale
(1 / stride) is inferred from its size relative to the largest image of the batch and rounded
to a power of two, as torchvision's MultiScaleRoIAlign does.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from detector import ops
from detector.ops import roi_align


def infer_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    approx_scale = float(feature.shape[-2]) / float(image_size[0])
    return 2 ** float(torch.tensor(approx_scale).log2().round())


def assign_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4) -> Tensor:
    """Index (0-based from k_min) of the pyramid level each box is pooled from."""
    sizes = torch.sqrt(ops.box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(1e-6, dtype=sizes.dtype))
    return (levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


class RoIPooler(nn.Module):
    def __init__(self, featmap_names: list[str], output_size: int = 7, sampling_ratio: int = 2):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
        maps = [features[name] for name in self.featmap_names]
        largest_image = (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
        scales = [infer_scale(feature, largest_image) for feature in maps]
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        )
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio)

        k_min = int(-math.log2(scales[0]))
        k_max = int(-math.log2(scales[-1]))
        levels = assign_levels(torch.cat(boxes), k_min, k_max)
        pooled = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, scales)):
            in_level = torch.where(levels == level)[0]
            pooled[in_level] = roi_align(feature, rois[in_level], self.output_size, scale, self.sampling_ratio).to(pooled.dtype)
        return pooled
