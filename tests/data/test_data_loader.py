import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data.distributed import DistributedSampler

from detector.config import AugmentConfig
from detector.data import DetectionDataset, GroupedBatchSampler, ImageRecord, build_loader
from detector.data.augment import Augmentation
from detector.data.records import CategoryMap


def random_ratios(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice([0.75, 1.0, 1.5], size=n).tolist()  # tall, square (counts as wide), wide


@pytest.mark.parametrize("n, b", [(1, 1), (1, 4), (7, 2), (10, 4), (16, 4), (17, 4), (33, 8), (50, 3), (101, 16)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_per_epoch_is_exactly_ceil_or_floor(n, b, drop_last):
    sampler = GroupedBatchSampler(random_ratios(n), b, drop_last=drop_last, seed=1)
    expected = n // b if drop_last else math.ceil(n / b)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == expected
        flat = [i for batch in batches for i in batch]
        assert len(flat) == len(set(flat))  # no index twice
        if drop_last:
            assert all(len(batch) == b for batch in batches)
        else:
            assert sorted(flat) == list(range(n))  # every index exactly once
            assert sum(len(batch) < b for batch in batches) <= 1


def test_batches_are_orientation_pure_when_groups_divide_evenly():
    ratios = [1.5] * 8 + [0.6] * 12
    ratios = [ratios[i] for i in np.random.default_rng(3).permutation(20)]
    sampler = GroupedBatchSampler(ratios, 4, seed=0)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 5
        assert all(len({ratios[i] >= 1 for i in batch}) == 1 for batch in batches)
    # uneven groups: at most the merged leftover batches mix, every other batch is pure
    ratios = [1.5] * 9 + [0.6] * 14
    sampler = GroupedBatchSampler(ratios, 4, seed=0)
    mixed = [b for b in sampler if len({ratios[i] >= 1 for i in b}) > 1]
    assert len(list(sampler)) == 6 and len(mixed) <= 1


def test_same_seed_and_epoch_same_batches_other_epoch_other_order():
    ratios = random_ratios(40)
    a, b = GroupedBatchSampler(ratios, 4, seed=5), GroupedBatchSampler(ratios, 4, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    epoch3 = list(a)
    assert epoch3 == list(b)
    a.set_epoch(4)
    assert list(a) != epoch3
    a.set_epoch(3)
    assert list(a) == epoch3  # a resumed run sees the same data
    assert list(GroupedBatchSampler(ratios, 4, seed=6)) != list(GroupedBatchSampler(ratios, 4, seed=5))
    # without set_epoch, each pass moves on to the next epoch instead of repeating the order
    c = GroupedBatchSampler(ratios, 4, seed=5)
    c.set_epoch(3)
    assert list(c) == epoch3 and list(c) != epoch3


def test_evaluation_order_is_the_dataset_order():
    sampler = GroupedBatchSampler(random_ratios(10), 4, shuffle=False, group=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_index_subset_and_distributed_sampler_shards():
    ratios = random_ratios(30)
    subset = list(range(0, 30, 3))
    sampler = GroupedBatchSampler(ratios, 4, indices=subset, seed=0)
    assert len(sampler) == 3 and sorted(i for b in sampler for i in b) == subset
    shards = []
    for rank in range(2):
        dist = DistributedSampler(range(30), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler = GroupedBatchSampler(ratios, 4, sampler=dist)
        sampler.set_epoch(1)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(15 / 4)
        shards.append({i for b in batches for i in b})
    assert shards[0] | shards[1] == set(range(30)) and not shards[0] & shards[1]


class Tiny(torch.utils.data.Dataset):
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        w, h = self.sizes[i]
        return torch.zeros(3, h, w), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": i}

    def aspect_ratios(self):
        return [w / h for w, h in self.sizes]


def test_build_loader_collates_lists_and_groups_for_training():
    sizes = [(40, 20)] * 6 + [(20, 40)] * 6
    loader = build_loader(Tiny(sizes), 3, train=True, workers=0, seed=0)
    assert len(loader) == 4
    loader.set_epoch(0)
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == 3
        assert len({tuple(im.shape) for im in images}) == 1  # one orientation per batch
    val = build_loader(Tiny(sizes), 5, train=False, drop_last=False)
    assert [[t["image_id"] for t in targets] for _, targets in val] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert len(build_loader(Tiny(sizes), 5, train=True, drop_last=True)) == 2


def augmented_dataset(tmp_path, n=6):
    image = np.zeros((32, 48, 3), np.uint8)
    image[8:24, 4:20] = 255
    cv2.imwrite(str(tmp_path / "a.png"), image)
    records = [ImageRecord(i, tmp_path / "a.png", 48, 32, [[4, 8, 20, 24]], [1], [False]) for i in range(n)]
    config = AugmentConfig(hflip=0.5, brightness=0.3)
    return DetectionDataset(records, CategoryMap((1,), ("box",)), transform=Augmentation(config))


def draws(loader, epoch):
    loader.set_epoch(epoch)
    return [(tuple(im.shape), round(float(im.mean()), 5), tuple(map(tuple, t["boxes"].tolist()))) for ims, ts in loader for im, t in zip(ims, ts)]


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentations_are_reproducible_per_seed_and_epoch(tmp_path, workers):
    dataset = augmented_dataset(tmp_path)
    first = build_loader(dataset, 2, train=True, workers=workers, seed=7, group_aspect_ratio=False)
    second = build_loader(dataset, 2, train=True, workers=workers, seed=7, group_aspect_ratio=False)
    epoch0 = draws(first, 0)
    assert epoch0 == draws(second, 0)
    assert len(set(epoch0)) > 1  # the same image drawn differently each time
    assert epoch0[0] != epoch0[2]  # first draw of batch 0 and of batch 1: with 2 workers, one each
    assert draws(first, 1) != epoch0
    assert draws(first, 0) == epoch0


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 120), b=st.integers(1, 17), drop_last=st.booleans(), seed=st.integers(0, 2**31),
       wide=st.lists(st.booleans(), min_size=120, max_size=120))
def test_any_mix_of_orientations_keeps_the_epoch_length(n, b, drop_last, seed, wide):
    ratios = [1.5 if w else 0.5 for w in wide[:n]]
    sampler = GroupedBatchSampler(ratios, b, drop_last=drop_last, seed=seed)
    batches = list(sampler)
    flat = [i for batch in batches for i in batch]
    assert len(batches) == len(sampler) == (n // b if drop_last else math.ceil(n / b))
    assert len(flat) == len(set(flat)) and (drop_last or sorted(flat) == list(range(n)))
    assert all(len(batch) == b for batch in batches) if drop_last else all(1 <= len(batch) <= b for batch in batches)
    # at most two batches mix orientations: the merged leftovers
    assert sum(len({ratios[i] >= 1 for i in batch}) > 1 for batch in batches) <= 2
