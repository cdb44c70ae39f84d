"""RoIAlign over one or several feature maps.

With a pyramid, each box is pooled from the level that suits its size (FPN paper, eq. 1):
level = floor(4 + log2(sqrt(area) / 224)), clamped to the levels present. Each map is pooled
at 1 / its stride, as the backbone declares it (torchvision's MultiScaleRoIAlign guesses the
scale from the largest image's height, which is twice wrong on images only a few cells high).
The exported graph pools through `pool_rois`, the same function the eager model runs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector import ops
from detector.errors import ConfigError
from detector.modeling.geometry import pooling_scales
from detector.ops import roi_align


def assign_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4) -> Tensor:
    """Index (0-based from k_min) of the pyramid level each box is pooled from."""
    sizes = torch.sqrt(ops.box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(1e-6, dtype=sizes.dtype))
    return (levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min).to(torch.int64)


def rois_of(boxes: list[Tensor]) -> Tensor:
    """Per-image boxes -> RoIAlign's [N, 5] rows (image index, x1, y1, x2, y2)."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)


class RoIPooler(nn.Module):
    """`forward(features, boxes per image)` -> [N, C, S, S] pooled features, N the boxes of
    every image in order. `strides`: the stride of each of `featmap_names`."""

    def __init__(self, featmap_names: list[str], strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2):
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ConfigError(f"RoIPooler: maps {featmap_names} but strides {list(strides)}; give one stride per map")
        self.featmap_names = list(featmap_names)
        self.scales = pooling_scales(strides)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        return self.pool_rois(features, rois_of(boxes))

    def pool_rois(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """RoIAlign of rois [N, 5], each from its level; traceable (no Python-side shapes)."""
        maps = [features[name] for name in self.featmap_names]
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        k_min = round(-math.log2(self.scales[0]))
        k_max = round(-math.log2(self.scales[-1]))
        levels = assign_levels(rois[:, 1:], k_min, k_max)
        pooled = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, self.scales)):
            in_level = torch.nonzero(levels == level).squeeze(1)
            level_pooled = roi_align(feature, rois[in_level], self.output_size, scale, self.sampling_ratio)
            pooled.index_put_((in_level,), level_pooled.to(pooled.dtype))
        return pooled
