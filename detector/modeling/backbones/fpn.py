"""Feature Pyramid Network (Lin et al. 2017), as torchvision computes it.

Top-down: the coarsest map goes through a 1x1 "inner" conv; each finer map adds its own 1x1
lateral to the upsampled (nearest) coarser result; a 3x3 "layer" conv smooths every sum.
An extra "pool" level subsamples the coarsest output by 2 (torchvision's LastLevelMaxPool).
Parameter names (`inner_blocks.i.0.weight`, `layer_blocks.i.1.running_mean`, ...) equal
torchvision's, so its detection checkpoints load unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, norm_layer: Callable[[int], nn.Module] | None):
    # A conv followed by a norm needs no bias: the norm's own bias replaces it.
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    return nn.Sequential(*layers)


class LastLevelMaxPool(nn.Module):
    """One more level at twice the coarsest stride: a kernel-1, stride-2 max pool is a subsampling."""

    def forward(self, results: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], names + ["pool"]


class FeaturePyramidNetwork(nn.Module):
    """`forward(OrderedDict of maps, finest first) -> OrderedDict` with the same keys plus "pool",
    every map with `out_channels` channels."""

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(_conv_norm(c, out_channels, 1, norm_layer) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(
            _conv_norm(out_channels, out_channels, 3, norm_layer) for _ in in_channels_list
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.extra_blocks = LastLevelMaxPool()

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names = list(features.keys())
        maps = list(features.values())
        last_inner = self.inner_blocks[-1](maps[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(maps) - 2, -1, -1):
            lateral = self.inner_blocks[idx](maps[idx])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results))
