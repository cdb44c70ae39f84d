"""Sliced prediction: a large image cut into overlapping tiles, the tiles run through the model in
batches, their detections moved back to the image and merged (inference/merging.py).

A 4000 x 3000 photo resized to 600 px makes a 20 px object 3 px, below what the model can see;
a 512 px tile keeps it at 20 px or more. Tiles cover the image with no thin leftovers: the
last tile of a row or column shifts inward, overlapping its neighbour more. A slice larger
than the image is one tile of the image's own size. With `full_image` the whole image is also
predicted, for objects larger than a tile.

`SlicedModel` wraps the model's call contract (list of [3, H, W] tensors in 0..1 -> detections),
so `detector eval` scores it like the plain model; `SlicedPredictor` wraps a predictor (eager,
ONNX Runtime or OpenVINO alike) for predict, analyze and serve. All tiles have one size, so each
batch is one forward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detector.choices import MIN_TILE_SIZE
from detector.config import settings_from_section
from detector.errors import ConfigError
from detector.inference.categories import with_categories
from detector.inference.merging import CUT_TOLERANCE, merge_detections

FULL_IMAGE_SOURCE = -1  # the source id of the full-image pass among the tiles' 0..T-1


@dataclass(frozen=True)
class SliceSettings:
    """How to slice (config `inference.slice.*`, options --slice, --overlap, --full-image)."""

    size: int = 0
    overlap: float = 0.2
    full_image: bool = False
    match_threshold: float = 0.5
    batch_size: int = 8

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or (self.size != 0 and self.size < MIN_TILE_SIZE):
            raise ConfigError(f"--slice (inference.slice.size) {self.size!r}: a tile side of at least {MIN_TILE_SIZE} "
                              "pixels, or 0 for the whole image at once")
        if not 0 <= self.overlap < 0.9:
            raise ConfigError(f"--overlap (inference.slice.overlap) {self.overlap!r}: a fraction in [0, 0.9)")
        if not 0 <= self.match_threshold <= 1:
            raise ConfigError(f"inference.slice.match_threshold {self.match_threshold!r}: an intersection-over-smaller "
                              "in 0..1")
        if self.batch_size < 1:
            raise ConfigError(f"inference.slice.batch_size {self.batch_size!r}: >= 1 tiles per forward pass")

    @property
    def enabled(self) -> bool:
        """Whether images are predicted sliced: `size` > 0 (0 = whole images)."""
        return self.size > 0

    @classmethod
    def from_config(cls, section: Any, **changes) -> "SliceSettings":
        """Settings of a config's `inference.slice` (the dataclass or its dict; keys it lacks keep
        their defaults, as in a checkpoint older than slicing), with `changes` applied."""
        return settings_from_section(cls, section, changes)

    def describe(self) -> str:
        """One line for the log: tile size, overlap, whether the full image is added, tiles per batch."""
        return (f"sliced: {self.size} px tiles, overlap {self.overlap:g}"
                + (", plus the full image" if self.full_image else "") + f", {self.batch_size} tiles per batch")


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Where the tiles of one side begin: a step of size * (1 - overlap), the last tile ending at
    the border (shifted inward rather than leaving a thin strip)."""
    if length <= size:
        return [0]
    step = max(1, int(round(size * (1 - overlap))))
    count = math.ceil((length - size) / step) + 1
    return sorted({min(index * step, length - size) for index in range(count)})


def tile_windows(height: int, width: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles (x1, y1, x2, y2) of a height x width image, row by row; each is
    min(size, width) x min(size, height) pixels."""
    tile_w, tile_h = min(size, width), min(size, height)
    return [(x, y, x + tile_w, y + tile_h) for y in tile_starts(height, size, overlap)
            for x in tile_starts(width, size, overlap)]


def cut_sides(boxes: Tensor, window: tuple[int, int, int, int], height: int, width: int) -> Tensor:
    """[N, 4] bools: which sides of `boxes` (image pixels) lie on an edge of tile `window` that is
    inside the image, where the tile may have cut the object."""
    x1, y1, x2, y2 = window
    inner = torch.tensor([x1 > 0, y1 > 0, x2 < width, y2 < height], device=boxes.device)
    edges = torch.tensor([x1, y1, x2, y2], dtype=boxes.dtype, device=boxes.device)
    return inner & ((boxes - edges).abs() <= CUT_TOLERANCE)


class SlicedModel:
    """The model's inference call contract, sliced: `model(list of [3, H, W] tensors in 0..1)`
    -> one {"boxes", "labels", "scores"} per image, in that image's pixels."""

    def __init__(self, model, settings: SliceSettings):
        if not settings.enabled:
            raise ConfigError("SlicedModel needs inference.slice.size > 0")
        self.model = model
        self.settings = settings

    def eval(self) -> "SlicedModel":
        self.model.eval()
        return self

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        settings = self.settings
        windows = [tile_windows(int(image.shape[-2]), int(image.shape[-1]), settings.size, settings.overlap)
                   for image in images]
        tiles = [image[:, y1:y2, x1:x2] for image, image_windows in zip(images, windows)
                 for x1, y1, x2, y2 in image_windows]
        tile_outputs = iter(self.run_in_batches(tiles))
        full_outputs = iter(self.run_in_batches(list(images)) if settings.full_image else [])
        results = []
        for image, image_windows in zip(images, windows):
            height, width = int(image.shape[-2]), int(image.shape[-1])
            boxes, scores, labels, sources, cut = [], [], [], [], []
            for source, window in enumerate(image_windows):
                output = next(tile_outputs)
                shift = torch.tensor([window[0], window[1], window[0], window[1]], dtype=output["boxes"].dtype,
                                     device=output["boxes"].device)
                tile_boxes = output["boxes"] + shift
                boxes.append(tile_boxes)
                cut.append(cut_sides(tile_boxes, window, height, width))
                scores.append(output["scores"])
                labels.append(output["labels"])
                sources.append(torch.full_like(output["labels"], source))
            if settings.full_image:
                output = next(full_outputs)
                boxes.append(output["boxes"])
                cut.append(torch.zeros(output["boxes"].shape, dtype=torch.bool, device=output["boxes"].device))
                scores.append(output["scores"])
                labels.append(output["labels"])
                sources.append(torch.full_like(output["labels"], FULL_IMAGE_SOURCE))
            merged = merge_detections(torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(sources),
                                      torch.cat(cut), settings.match_threshold)
            results.append(dict(zip(("boxes", "scores", "labels"), merged)))
        return results

    def run_in_batches(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """The model's detections of `images`, settings.batch_size at a time (one forward each:
        the tiles of a batch share one size)."""
        size = self.settings.batch_size
        return [output for start in range(0, len(images), size) for output in self.model(images[start:start + size])]


class SlicedPredictor:
    """A predictor (eager or exported) predicting sliced: `predict`, `check_size`, `category_ids`,
    `category_names`, `device` and `model` as every predictor (inference/loading.py)."""

    def __init__(self, predictor, settings: SliceSettings):
        self.predictor = predictor
        self.settings = settings
        self.model = SlicedModel(predictor.model, settings)
        self.category_ids, self.category_names = predictor.category_ids, predictor.category_names
        self.device = predictor.device

    def __getattr__(self, name: str):  # what else the wrapped predictor tells (backend, path, metadata, ...)
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def check_size(self, height: int, width: int, name: str) -> None:
        """DegenerateImageError naming `name` when a tile (or, with full_image, the whole image)
        of a height x width image would resize below one pixel a side: such a tile is never sent."""
        self.predictor.check_size(min(height, self.settings.size), min(width, self.settings.size), name)
        if self.settings.full_image:
            self.predictor.check_size(height, width, name)

    def predict(self, images: list[np.ndarray], batch_size: int | None = None) -> list[dict]:
        """Detections for RGB uint8 arrays [H, W, 3], as every predictor's `predict`; the tiles
        run settings.batch_size at a time (`batch_size` is the images', unused here)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(self.device)
                   for image in images]
        for index, tensor in enumerate(tensors):
            self.check_size(int(tensor.shape[-2]), int(tensor.shape[-1]), f"image {index}")
        return [with_categories(output["boxes"].cpu().numpy(), output["scores"].cpu().numpy(),
                                output["labels"].cpu().numpy(), self.category_ids, self.category_names)
                for output in self.model(tensors)]
