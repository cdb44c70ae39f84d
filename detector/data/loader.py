"""Batches for training and evaluation: aspect-ratio grouping with exact epoch length, seeding.

Grouping puts wide images (width >= height) with wide and tall with tall, so a padded batch
wastes less. Unlike torchvision's GroupedBatchSampler it never changes the number of batches
in an epoch: ceil(N / B), or floor(N / B) with drop_last, so the trainer's epoch and iteration
accounting holds. Each epoch: shuffle the indices (seed + epoch), split them into the two
orientations, cut full batches inside each, merge the leftovers (fewer than B of each) into
mixed batches, then shuffle the order of the batches.
"""
from __future__ import annotations

import math
import random
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detector.data.dataset import SkippedSample
from detector.errors import ConfigError


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices.

    `indices`: the dataset indices this sampler draws from (a subset, or one rank's shard);
    default all. `sampler`: an index sampler whose order is used instead of our shuffle (e.g.
    `DistributedSampler`; its `set_epoch` is forwarded). Each `__iter__` uses the current epoch
    and then moves to the next one, so iterating without `set_epoch` still reshuffles;
    `set_epoch(e)` makes the order a function of (seed, e) alone.
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, *, shuffle: bool = True,
                 group: bool = True, drop_last: bool = False, seed: int = 0,
                 indices: Sequence[int] | None = None, sampler: Iterable[int] | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.wide = [float(r) >= 1.0 for r in aspect_ratios]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group = group
        self.drop_last = drop_last
        self.seed = seed
        self.indices = list(range(len(self.wide))) if indices is None else [int(i) for i in indices]
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _num_indices(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.indices)  # type: ignore[arg-type]

    def __len__(self) -> int:
        n, b = self._num_indices(), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.sampler is not None:
            order = [int(i) for i in self.sampler]
        elif self.shuffle:
            order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator).tolist()]
        else:
            order = list(self.indices)
        self.epoch += 1  # the next pass without set_epoch gets a new order
        yield from self._batches(order, generator)

    def _batches(self, order: list[int], generator: torch.Generator) -> list[list[int]]:
        b = self.batch_size
        if not self.group:
            batches = [order[i:i + b] for i in range(0, len(order), b)]
        else:
            batches, leftovers = [], []
            for orientation in (True, False):
                members = [i for i in order if self.wide[i] == orientation]
                full = len(members) // b * b
                batches += [members[i:i + b] for i in range(0, full, b)]
                leftovers += members[full:]
            batches += [leftovers[i:i + b] for i in range(0, len(leftovers), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()  # only the last (mixed) batch can be incomplete
        if self.group and self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict], list[SkippedSample]]:
    """[(image, target) or SkippedSample, ...] -> ([images], [targets], [skipped]): the model
    takes lists (sizes differ); samples whose image could not be decoded are set apart."""
    skipped = [sample for sample in batch if isinstance(sample, SkippedSample)]
    good = [sample for sample in batch if not isinstance(sample, SkippedSample)]
    images, targets = zip(*good) if good else ((), ())
    return list(images), list(targets), skipped


def seed_worker(worker_id: int) -> None:
    """Seed a loader worker from its torch seed (loader generator + worker id): numpy, random,
    and the dataset's augmentation, so workers draw different, reproducible augmentations."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


class DetectionLoader(DataLoader):
    """A DataLoader with `set_epoch(epoch)`: the batch order and the augmentation seeds of an
    epoch depend only on (seed, epoch), so a resumed run sees the same data.

    It yields `(images, targets)`. A sample whose image fails to decode (in a worker or not) is
    left out of its batch, which may then be shorter or empty, and appended to `skipped`, so
    one bad file neither kills a long run nor hangs a worker, and the caller can say which."""

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.skipped: list[SkippedSample] = []

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # data.tiles: this epoch's negative crops (tiles.py)
            self.dataset.set_epoch(epoch)  # before __iter__ forks the workers, which inherit it
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self):
        if self.num_workers == 0 and hasattr(self.dataset, "reseed"):
            # No worker processes: seed the augmentation here, from the same generator the
            # workers' seeds come from.
            self.dataset.reseed(int(torch.empty((), dtype=torch.int64).random_(generator=self.generator)) % 2**32)
        for images, targets, skipped in super().__iter__():
            self.skipped += skipped
            yield images, targets


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, seed: int = 0,
                 group_aspect_ratio: bool = True, drop_last: bool = False,
                 sampler: Iterable[int] | None = None) -> DetectionLoader:
    """A loader yielding `(list[Tensor[3,H,W]], list[target dict])`.

    train: shuffled each epoch (seed + epoch), grouped by orientation when `group_aspect_ratio`
    (the dataset needs `aspect_ratios()`), `drop_last` as given. Evaluation: dataset order, no
    grouping. `sampler` (e.g. a `DistributedSampler` or a subset sampler) replaces the shuffle;
    grouping still applies. Batches per epoch: ceil(N / B), floor(N / B) with drop_last.
    """
    if group_aspect_ratio and train and hasattr(dataset, "aspect_ratios"):
        ratios = dataset.aspect_ratios()
    else:
        ratios = [1.0] * len(dataset)  # type: ignore[arg-type]
    batch_sampler = GroupedBatchSampler(ratios, batch_size, shuffle=train, group=train and group_aspect_ratio,
                                        drop_last=drop_last, seed=seed, sampler=sampler)
    generator = torch.Generator().manual_seed(seed)
    return DetectionLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                           collate_fn=collate_detection, worker_init_fn=seed_worker,
                           generator=generator, seed=seed)
