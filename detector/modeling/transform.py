"""What happens to images between the user and the backbone, and to boxes on the way back.

Normalize with the backbone's mean/std, resize so the short side is `min_size` (the long side
capped at `max_size`), pad the batch to a multiple of `size_divisible`; after inference, scale
boxes back to each original image. Same arithmetic as torchvision's GeneralizedRCNNTransform,
so the two agree to the last bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.errors import InputError


@dataclass
class ImageList:
    """A padded batch plus the size (height, width) of every image before padding."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    ratio_height = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(original_size[0], dtype=torch.float32)
    ratio_width = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(original_size[1], dtype=torch.float32)
    x1, y1, x2, y2 = boxes.unbind(1)
    ratio_height, ratio_width = ratio_height.to(boxes.device), ratio_width.to(boxes.device)
    return torch.stack((x1 * ratio_width, y1 * ratio_height, x2 * ratio_width, y2 * ratio_height), dim=1)


class DetectionTransform(nn.Module):
    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        size_divisible: int = 32,
    ):
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.size_divisible = size_divisible

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized_images = []
        resized_targets = [] if targets is not None else None
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise InputError(f"image {index}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
            if not image.is_floating_point():
                raise InputError(
                    f"image {index}: expected a float tensor with values in 0..1, got {image.dtype} "
                    "(convert with image.float() / 255)"
                )
            resized = self.resize(self.normalize(image))
            resized_images.append(resized)
            if targets is not None:
                target = dict(targets[index])
                target["boxes"] = resize_boxes(target["boxes"], tuple(image.shape[-2:]), tuple(resized.shape[-2:]))
                resized_targets.append(target)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized_images]
        return ImageList(self.batch_images(resized_images), image_sizes), resized_targets

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        # recompute_scale_factor: the output size is floor(side * scale), exactly as torchvision.
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def batch_images(self, images: list[Tensor]) -> Tensor:
        stride = float(self.size_divisible)
        height = int(math.ceil(max(img.shape[1] for img in images) / stride) * stride)
        width = int(math.ceil(max(img.shape[2] for img in images) / stride) * stride)
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        for img, padded in zip(images, batch):
            padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        return batch

    def postprocess(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        for detection, size, original_size in zip(detections, image_sizes, original_image_sizes):
            detection["boxes"] = resize_boxes(detection["boxes"], size, original_size)
        return detections

    def extra_repr(self) -> str:
        return (
            f"normalize(mean={self.image_mean}, std={self.image_std}), "
            f"resize(min_size={self.min_size}, max_size={self.max_size}), pad to /{self.size_divisible}"
        )
