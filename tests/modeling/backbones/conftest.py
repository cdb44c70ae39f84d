"""Real photos for the backbone tests, from scikit-image's bundled samples (no download, no skip):
chelsea (a tabby cat, ImageNet classes 281-285) and coffee (a cup on a saucer)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.modeling.backbones.base import IMAGENET_MEAN, IMAGENET_STD


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    return (image - torch.as_tensor(mean)[:, None, None]) / torch.as_tensor(std)[:, None, None]


@pytest.fixture(scope="session")
def chelsea() -> torch.Tensor:
    """skimage's chelsea squashed to 224x224, [3, 224, 224] in 0..1."""
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255
    return resize(image, (224, 224))


@pytest.fixture(scope="session")
def real_photo() -> torch.Tensor:
    """skimage's coffee photo resized to 232x312 (not multiples of 32: the FPN's upsampling must
    cope), ImageNet-normalized, as [1, 3, H, W]."""
    from skimage import data

    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).float() / 255
    return normalize(resize(image, (232, 312)), IMAGENET_MEAN, IMAGENET_STD)[None]
