"""data.cache: ram: images decoded once and served from memory, with the same samples."""
import numpy as np
import torch

from detector import load_config
from detector.data import DetectionDataset, ImageRecord
from detector.data.dataset import SkippedSample
from detector.data.records import CategoryMap

from data_helpers import write_image

CMAP = CategoryMap([1], ["thing"])


def records(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", 30 + i, 20, colour=(10 * i, 50, 200)) for i in range(3)]
    return [ImageRecord(i, path, 30 + i, 20, [[1, 2, 10, 12]], [1], [False]) for i, path in enumerate(paths)]


def test_cached_samples_equal_decoded_ones_and_need_no_file(tmp_path):
    plain = DetectionDataset(records(tmp_path), CMAP)
    cached = DetectionDataset(records(tmp_path), CMAP)
    assert cached.cache_images() == sum(20 * (30 + i) * 3 for i in range(3))
    expected = [plain[i] for i in range(3)]
    for record in cached.records:
        record.path.unlink()  # from now on only the cache can serve the images
    for (tensor, target), (expected_tensor, expected_target) in zip((cached[i] for i in range(3)), expected):
        assert torch.equal(tensor, expected_tensor)
        assert torch.equal(target["boxes"], expected_target["boxes"])


def test_an_augmentation_cannot_change_the_cached_pixels(tmp_path):
    def paint_in_place(image, boxes, labels):
        image[...] = 0
        return image, boxes, labels

    dataset = DetectionDataset(records(tmp_path), CMAP, transform=paint_in_place)
    dataset.cache_images()
    dataset[0]
    assert np.any(dataset.cached_images[0] != 0)


def test_an_image_that_fails_to_decode_is_not_cached_and_still_skipped_by_name(tmp_path):
    items = records(tmp_path)
    items[1].path.write_bytes(b"not an image")
    dataset = DetectionDataset(items, CMAP, skip_unreadable=True)
    dataset.cache_images()
    assert dataset.cached_images[1] is None
    skipped = dataset[1]
    assert isinstance(skipped, SkippedSample) and skipped.path == str(items[1].path)


def test_the_config_key_takes_ram_or_null_only():
    assert load_config(None, ["data.cache=ram"]).data.cache == "ram"
    assert load_config(None).data.cache is None
    import pytest

    from detector import ConfigError
    with pytest.raises(ConfigError, match="data.cache must be ram \\(or null\\), got 'disk'"):
        load_config(None, ["data.cache=disk"])
