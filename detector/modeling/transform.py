"""What happens to images between the user and the backbone, and to boxes on the way back.

Normalize with the backbone's mean/std, resize so the short side is `min_size` (the long side
capped at `max_size`), pad the batch to a multiple of `size_divisible`; after inference, scale
boxes back to each original image, as torchvision's GeneralizedRCNNTransform does. The rules
themselves (resize, padding) live in geometry.py, which the exported graph and the anchor fit
share; the resize there is exact integer arithmetic, one pixel more than torchvision's doubles
on a few sizes (392 x 399 at 256 -> 256 rows; torchvision's 255), the same on every backend.

Multi-scale training (`train_min_sizes`: torchvision's min_size tuple, detectron2's
ResizeShortestEdge): in training mode each batch's short side is drawn from the list, one size
for the whole batch, from torch's global generator, so the seed decides it and a checkpoint's
RNG state resumes it exactly; in eval mode the size is always `min_size`.

At inference an image must give the same detections alone or in any batch, so the model runs
only images of one padded size together (`run_size_groups`): padding to a larger neighbour
would change the features near the image's border and add anchors the image does not have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.errors import InputError
from detector.modeling.geometry import check_resizable, padded_size, resized_size


@dataclass
class ImageList:
    """A padded batch plus the size (height, width) of every image before padding."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: tuple, new_size: tuple) -> Tensor:
    """Boxes [..., 4] of an image of original_size (H, W) in pixels of new_size, with float32
    ratios as torchvision; sizes are ints, or 0-d tensors when the export traces them."""
    as_float = lambda size: torch.as_tensor(size).to(torch.float32)  # noqa: E731
    ratio_height = (as_float(new_size[0]) / as_float(original_size[0])).to(boxes.device)
    ratio_width = (as_float(new_size[1]) / as_float(original_size[1])).to(boxes.device)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1 * ratio_width, y1 * ratio_height, x2 * ratio_width, y2 * ratio_height), dim=-1)


class DetectionTransform(nn.Module):
    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        size_divisible: int = 32,
        train_min_sizes: tuple[int, ...] = (),
    ):
        super().__init__()
        self.min_size = min_size
        self.train_min_sizes = tuple(train_min_sizes)  # empty: training uses min_size too
        self.max_size = max_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.size_divisible = size_divisible

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized_images = []
        resized_targets = [] if targets is not None else None
        min_size = self.draw_min_size()
        for index, image in enumerate(images):
            self.check_image(image, index, min_size)
            resized = self.resize(self.normalize(image), min_size)
            resized_images.append(resized)
            if targets is not None:
                target = dict(targets[index])
                target["boxes"] = resize_boxes(target["boxes"], tuple(image.shape[-2:]), tuple(resized.shape[-2:]))
                resized_targets.append(target)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized_images]
        return ImageList(self.batch_images(resized_images), image_sizes), resized_targets

    def draw_min_size(self) -> int:
        """This batch's short side: `min_size`, or in training mode one of `train_min_sizes`."""
        if not self.training or not self.train_min_sizes:
            return self.min_size
        return self.train_min_sizes[int(torch.randint(len(self.train_min_sizes), ()))]

    def check_image(self, image: Tensor, index: int, min_size: int | None = None) -> None:
        """A [3, H, W] float image that resizes to at least one pixel a side, or an InputError
        naming image `index` (DegenerateImageError for the size)."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"image {index}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise InputError(
                f"image {index}: expected a float tensor with values in 0..1, got {image.dtype} "
                "(convert with image.float() / 255)"
            )
        check_resizable(int(image.shape[-2]), int(image.shape[-1]), min_size or self.min_size, self.max_size,
                        f"image {index}")

    def run_size(self, height: int, width: int) -> tuple[int, int]:
        """The padded size an image of height x width runs at, alone."""
        return padded_size(*resized_size(height, width, self.min_size, self.max_size), self.size_divisible)

    def run_size_groups(self, images: list[Tensor]) -> list[list[int]]:
        """Indices of `images` grouped by the padded size each runs at alone, in first-seen
        order: a group's images share a batch without changing each other's detections."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            self.check_image(image, index)
            groups.setdefault(self.run_size(int(image.shape[-2]), int(image.shape[-1])), []).append(index)
        return list(groups.values())

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, min_size: int | None = None) -> Tensor:
        # Interpolating to floor(side * scale) is what torchvision's recompute_scale_factor=True does.
        size = resized_size(int(image.shape[-2]), int(image.shape[-1]), min_size or self.min_size, self.max_size)
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def batch_images(self, images: list[Tensor]) -> Tensor:
        height, width = padded_size(max(img.shape[1] for img in images), max(img.shape[2] for img in images),
                                    self.size_divisible)
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
            f"resize(min_size={self.min_size}, max_size={self.max_size}"
            + (f", training: one of {list(self.train_min_sizes)} per batch" if self.train_min_sizes else "")
            + f"), pad to /{self.size_divisible}"
        )
