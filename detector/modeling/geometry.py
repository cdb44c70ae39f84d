"""The geometry of the model's input, defined once: how an image is resized, how a batch is
padded, the smallest detection kept, and the scale each feature map is pooled at.

The eager transform, the exported graph (export/graph.py) and the anchor fit
(analysis/anchor_fit.py) all call these functions. Each takes Python numbers or 0-d tensors:
the eager model passes ints, the tracer passes traced sizes, so B, H and W stay dynamic in the
ONNX file while the arithmetic stays the same (integers only: every runtime computes them alike).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detector.errors import DegenerateImageError

# A predicted box narrower or lower than this many pixels (of the resized image) is dropped.
MIN_BOX_SIZE = 1e-2
# Every side of the resized image must keep at least this many pixels; an image that would
# resize below it (a 1 x 2000 strip at min_size 600, max_size 1000) is refused by name.
MIN_RESIZED_SIDE = 1

Size = int | Tensor


def _minimum(a, b):
    return torch.minimum(a, b) if isinstance(a, Tensor) else min(a, b)


def _maximum(a, b):
    return torch.maximum(a, b) if isinstance(a, Tensor) else max(a, b)


def resized_size(height: Size, width: Size, min_size: int, max_size: int) -> tuple[Size, Size]:
    """Each side times scale = min(min_size / short side, max_size / long side), floored.

    Computed exactly, in integers: floor(side * min_size / short) when the short side can
    reach min_size without the long side passing max_size, else floor(side * max_size / long).
    torchvision computes it in doubles, whose rounding gives one pixel less on about 4-7% of
    sizes (392 x 399 at 256 -> 255 x 260); an ONNX runtime's arithmetic (float32 in OpenVINO)
    would round differently again, so only integers give every backend the same size."""
    short, long = _minimum(height, width), _maximum(height, width)
    if isinstance(height, Tensor):
        by_short = min_size * long <= max_size * short
        numerator = torch.where(by_short, torch.full_like(short, min_size), torch.full_like(short, max_size))
        denominator = torch.where(by_short, short, long)
    else:
        numerator, denominator = (min_size, short) if min_size * long <= max_size * short else (max_size, long)
    return height * numerator // denominator, width * numerator // denominator


def padded_size(height: Size, width: Size, size_divisible: int) -> tuple[Size, Size]:
    """Each side rounded up to a multiple of `size_divisible`: the size an image is run at."""
    return ((height + size_divisible - 1) // size_divisible * size_divisible,
            (width + size_divisible - 1) // size_divisible * size_divisible)


def check_resizable(height: int, width: int, min_size: int, max_size: int, name: str = "image") -> None:
    """Raises DegenerateImageError, naming `name`, when the image would resize below
    MIN_RESIZED_SIDE pixels on a side (the model cannot see it; interpolation would fail)."""
    if height < 1 or width < 1:
        raise DegenerateImageError(f"{name}: {height}x{width} px has no pixels to predict on")
    new_height, new_width = resized_size(height, width, min_size, max_size)
    if min(new_height, new_width) < MIN_RESIZED_SIDE:
        raise DegenerateImageError(
            f"{name}: {height}x{width} px (height x width) would resize to {new_height}x{new_width} px "
            f"(short side {min_size}, long side at most {max_size}); every side must keep at least "
            f"{MIN_RESIZED_SIDE} px (an aspect ratio of at most about {max_size}:1)")


def pooling_scales(strides: Sequence[int]) -> list[float]:
    """1 / stride of each pooled map: declared by the backbone, never guessed from image sizes."""
    return [1.0 / stride for stride in strides]
