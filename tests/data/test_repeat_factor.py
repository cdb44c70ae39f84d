"""Repeat-factor sampling (data/repeat_factor.py): LVIS's factors by hand, an exact epoch length
with each image drawn floor or ceil of its factor, the same draw on every rank, aspect-ratio
grouping and data.tiles on top of it."""
import math
from collections import Counter

import numpy as np
import pytest
from dataset_writers import write_dataset

from detector import load_config
from detector.config import TilesConfig
from detector.data import GroupedBatchSampler, build_loader, load_dataset
from detector.data.repeat_factor import RepeatFactorSampler, class_repeat_factors, image_repeat_factors
from detector.data.tiles import TiledDataset
from detector.engine.builders import build_accounting, repeat_factor_sampler
from detector.errors import ConfigError


def test_factors_are_sqrt_of_threshold_over_image_fraction_and_an_image_takes_its_largest():
    # 20 images: class 1 in all, class 2 in 2 (f = 0.1), class 3 in 5 (f = 0.25); one image has no box.
    labels = [np.array([1, 2])] * 2 + [np.array([1, 3, 3])] * 5 + [np.array([1])] * 12 + [np.array([], np.int64)]
    labels[-2] = np.array([1, 2, 3])  # f(2) = 3/20 now
    factors = class_repeat_factors(labels, threshold=0.6)
    assert factors[1] == 1.0  # f = 19/20 > t: never repeated
    assert factors[2] == pytest.approx(math.sqrt(0.6 / 0.15))  # 2.0
    assert factors[3] == pytest.approx(math.sqrt(0.6 / 0.3))  # 6 images of 20: 1.414
    per_image = image_repeat_factors(labels, factors)
    assert per_image[0] == pytest.approx(2.0) and per_image[2] == pytest.approx(math.sqrt(2))
    assert per_image[-2] == pytest.approx(2.0)  # classes 2 and 3: the larger
    assert per_image[-1] == 1.0 and per_image[10] == 1.0  # no box; only the common class


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_a_threshold_outside_0_1_is_refused_naming_the_key(threshold):
    with pytest.raises(ConfigError, match="data.repeat_threshold") as error:
        load_config(None, [f"data.repeat_threshold={threshold}"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="data.repeat_threshold"):
        class_repeat_factors([np.array([1])], threshold)


def test_an_unknown_sampler_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="data.sampler must be random or repeat_factor"):
        load_config(None, ["data.sampler=repeat"])


def test_every_epoch_has_the_exact_length_and_each_image_floor_or_ceil_of_its_factor():
    factors = np.array([1.0] * 30 + [2.4] * 5 + [3.7] * 2 + [1.5] * 3)
    sampler = RepeatFactorSampler(factors, seed=3)
    length = round(factors.sum())  # 30 + 12 + 7.4 + 4.5 = 53.9 -> 54
    assert sampler.epoch_length == len(sampler) == length
    totals = np.zeros(len(factors))
    epochs = 400
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == length
        counts = np.bincount(drawn, minlength=len(factors))
        expected = factors * length / factors.sum()
        assert ((counts == np.floor(expected)) | (counts == np.ceil(expected))).all()
        totals += counts
    np.testing.assert_allclose(totals / epochs, factors * length / factors.sum(), atol=0.06)  # unbiased
    sampler.set_epoch(7)
    first = list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first and list(RepeatFactorSampler(factors, seed=3).epoch_indices(7)) == first
    assert list(RepeatFactorSampler(factors, seed=4).epoch_indices(7)) != first


def test_processes_share_one_draw_and_split_it():
    factors = np.array([1.0] * 9 + [2.6] * 4)  # 19.4 -> 19 samples, 3 processes -> 7 each (2 padded)
    shards = []
    for rank in range(3):
        sampler = RepeatFactorSampler(factors, seed=1, num_replicas=3, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [7, 7, 7]
    whole = RepeatFactorSampler(factors, seed=1).epoch_indices(2)
    dealt = [i for k in range(7) for i in (shards[0][k], shards[1][k], shards[2][k])]
    assert dealt[:19] == whole and dealt[19:] == whole[:2]


def test_grouping_by_aspect_ratio_keeps_the_repeated_epoch_length():
    factors = np.array([1.0] * 10 + [3.0] * 3)  # 19 samples
    wide = [1.5 if i % 3 else 0.6 for i in range(13)]
    batches = GroupedBatchSampler(wide, 4, seed=0, sampler=RepeatFactorSampler(factors, seed=0))
    drawn = list(batches)
    assert len(drawn) == len(batches) == math.ceil(19 / 4)
    assert sum(len(b) for b in drawn) == 19
    mixed = [b for b in drawn if len({wide[i] >= 1 for i in b}) > 1]
    assert len(mixed) <= 1  # only the leftovers' batch mixes orientations
    assert Counter(i for b in drawn for i in b)[10] == 3
    assert len(GroupedBatchSampler(wide, 4, drop_last=True, sampler=RepeatFactorSampler(factors))) == 19 // 4


def test_crops_of_a_rare_class_are_repeated_with_data_tiles(tmp_path):
    images = {f"{i}.png": (128, 128) for i in range(4)}
    boxes = {f"{i}.png": [("cat", 10, 10, 40, 40), ("cat", 70, 70, 100, 100), ("cat", 10, 70, 40, 100)]
             for i in range(4)}  # 3 of each image's 4 crops: f(cat) = 12 / 16, above the threshold
    boxes["0.png"].append(("dog", 70, 10, 100, 40))  # one crop of 16 holds the dog
    data = write_dataset("coco", tmp_path, images, boxes)
    tiled = TiledDataset(load_dataset(data.config), TilesConfig(size=64, overlap=0.0, negative_ratio=1.0), seed=0)
    assert len(tiled.positives) == 13 and len(tiled) == 16  # 12 cat crops + the dog's, the 3 negatives
    config = load_config(None, ["data.sampler=repeat_factor", "data.repeat_threshold=0.5625", "train.batch_size=4"])
    sampler = repeat_factor_sampler(config, tiled, None)
    dog = next(i for i, r in enumerate(tiled.records) if 2 in r.labels)
    assert sampler.repeat_factors[dog] == pytest.approx(3.0)  # f(dog) = 1/16: r = sqrt(0.5625 x 16)
    assert sampler.epoch_length == 15 + 3
    loader = build_loader(tiled, 4, train=True, sampler=sampler)
    accounting = build_accounting(config.train, len(tiled), 1, 4, sampler.epoch_length)
    for epoch in range(3):
        loader.set_epoch(epoch)
        drawn = [i for batch in loader.batch_sampler for i in batch]
        assert len(drawn) == 18 and Counter(drawn)[dog] == 3
        assert len(list(loader.batch_sampler)) == accounting.iters_per_epoch == 5  # ceil(18 / 4)
    assert ("18 training samples per epoch (data.sampler: repeat_factor over 16 crops), batch 4 -> 5 iterations "
            "per epoch (ceil(18 / 4))") in accounting.describe()
