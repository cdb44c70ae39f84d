"""Repeat-factor sampling (`data.sampler: repeat_factor`): images of rare classes come more often.

LVIS (Gupta et al., 2019) and detectron2's RepeatFactorTrainingSampler: a class c present in a
fraction f(c) of the training images gets r(c) = max(1, sqrt(t / f(c))), t = `data.repeat_threshold`;
an image takes the largest r of the classes it holds (1 without objects), so a class in 1% of the
images at t = 0.1 is seen ~3.2 times as often and a class above the threshold is never repeated.

An image with r = 2.4 must come 2 or 3 times (2.4 on average). detectron2 rounds each image on its
own, so its epoch length varies; here the rounding is systematic sampling: the images in a
shuffled order, each a segment of length r_i on a line of total R = sum(r_i), and N = round(R)
points at (u + k) R / N, k = 0..N-1, u uniform in [0, 1): an image is drawn once per point in its
segment, i.e. floor or ceil of r_i N / R times, r_i N / R on average. Every epoch then has exactly
N samples (so iterations per epoch are ceil(N / B), or floor with drop_last, as for plain
epochs), and the draw is a function of (seed, epoch) alone: the same on every DDP process, which
then takes every world_size-th sample of the list (padded by repetition, as DistributedSampler).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from detector.errors import ConfigError


def class_repeat_factors(image_labels: Sequence[np.ndarray], threshold: float) -> dict[int, float]:
    """{label: r(label)} for every label that occurs; `image_labels` are each image's labels."""
    if not 0 < threshold <= 1:
        raise ConfigError(f"data.repeat_threshold must be a fraction of the images in (0, 1], got {threshold!r}")
    images_with = {}
    for labels in image_labels:
        for label in set(int(x) for x in labels):
            images_with[label] = images_with.get(label, 0) + 1
    fraction = {label: count / max(len(image_labels), 1) for label, count in images_with.items()}
    return {label: max(1.0, math.sqrt(threshold / f)) for label, f in sorted(fraction.items())}


def image_repeat_factors(image_labels: Sequence[np.ndarray], class_factors: dict[int, float]) -> np.ndarray:
    """Each image's r: the largest of its classes', 1 for an image without objects."""
    return np.array([max((class_factors[int(x)] for x in labels), default=1.0) for labels in image_labels],
                    np.float64)


class RepeatFactorSampler(Sampler[int]):
    """Dataset indices for one epoch, each image `repeat_factors[i]` times on average,
    `epoch_length` = round(sum) in all; this process's share (`rank` of `num_replicas`).
    `set_epoch(e)` makes the draw a function of (seed, e); `__iter__` without it moves on."""

    def __init__(self, repeat_factors: Sequence[float], seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.repeat_factors = np.asarray(repeat_factors, np.float64)
        if len(self.repeat_factors) == 0 or (self.repeat_factors < 1).any():
            raise ConfigError("data.sampler: repeat_factor needs at least one image and factors >= 1")
        self.epoch_length = int(round(self.repeat_factors.sum()))
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> list[int]:
        """All processes' samples of `epoch`, shuffled: `epoch_length` dataset indices."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.repeat_factors))
        ends = np.cumsum(self.repeat_factors[order])
        step = ends[-1] / self.epoch_length
        points = (rng.random() + np.arange(self.epoch_length)) * step
        drawn = order[np.minimum(np.searchsorted(ends, points, side="right"), len(order) - 1)]
        return drawn[rng.permutation(len(drawn))].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)
        self.epoch += 1
        total = len(self) * self.num_replicas
        indices += indices[:total - len(indices)]  # pad so every process gets as many
        return iter(indices[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return math.ceil(self.epoch_length / self.num_replicas)


def describe_repeat_factors(class_factors: dict[int, float], image_factors: np.ndarray, threshold: float,
                            names: Sequence[str]) -> list[str]:
    """Log lines: each class's repeat factor and the effective epoch length."""
    classes = ", ".join(f"{names[label - 1] if 0 < label <= len(names) else label} {r:.2f}"
                        for label, r in class_factors.items())
    repeated = int((image_factors > 1).sum())
    return [f"data.sampler: repeat_factor (threshold {threshold:g}): repeat factor per class: {classes}",
            f"  {len(image_factors)} images, {repeated} of them repeated (r > 1) -> effective epoch length "
            f"round({image_factors.sum():.1f}) = {int(round(image_factors.sum()))} samples"]
