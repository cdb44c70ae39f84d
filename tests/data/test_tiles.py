"""Training on tiles (data/tiles.py): which boxes a crop keeps, the crop's pixels, the seeded
negative choice (the same on every rank), the three readers alike, and no val image in training."""
import cv2
import numpy as np
import pytest
import torch
from dataset_writers import FORMATS, write_dataset

from detector import load_config
from detector.config import TilesConfig
from detector.data import build_loader, load_dataset
from detector.data.tiles import TiledDataset, check_no_shared_images, visible_boxes
from detector.engine.builders import Accounting, build_datasets
from detector.errors import ConfigError, DataError


def test_a_box_is_kept_when_enough_of_it_is_inside_and_clipped_to_the_crop():
    window = (100, 100, 200, 200)
    boxes = np.array([
        [120, 120, 140, 150],  # wholly inside
        [90, 120, 110, 140],  # 10 of its 20 px width inside: 0.5 visible
        [195, 100, 215, 110],  # 5 of 20 px: 0.25 visible
        [0, 0, 50, 50],  # outside
        [150, 190, 170, 230],  # 10 of 40 px height: 0.25
    ], np.float32)
    clipped, keep = visible_boxes(boxes, window, 0.5)
    assert keep.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(clipped[:2], [[20, 20, 40, 50], [0, 20, 10, 40]])
    _, keep = visible_boxes(boxes, window, 0.25)
    assert keep.tolist() == [True, True, True, False, True]
    _, keep = visible_boxes(boxes, window, 0.51)
    assert keep.tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("fmt", FORMATS)
def test_crops_hold_the_image_pixels_and_their_boxes_in_every_format(tmp_path, fmt):
    boxes = {"big.png": [("cat", 10, 10, 30, 40), ("dog", 100, 60, 140, 100), ("cat", 290, 190, 300, 200)],
             "small.png": []}
    data = write_dataset(fmt, tmp_path, {"big.png": (300, 200), "small.png": (100, 80)}, boxes)
    pixels = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    cv2.imwrite(str(data.image("big.png")), pixels)  # RGB in the file order cv2 writes (BGR)
    tiles = TilesConfig(size=128, overlap=0.25, min_visible=0.5, negative_ratio=1.0)
    tiled = TiledDataset(load_dataset(data.config), tiles, seed=0)

    # 300 x 200 at 128, step 96: x 0, 96, 172 (the last shifted inward), y 0, 72; the 100 x 80 image is one crop.
    big = [r for r in tiled.positives + tiled.negatives if r.path.name == "big.png"]
    assert sorted(r.window for r in big) == sorted((x, y, x + 128, y + 128) for x in (0, 96, 172) for y in (0, 72))
    assert sorted(tiled.tiles_per_image) == [1, 6]
    small = [r for r in tiled.positives + tiled.negatives if r.path.name == "small.png"]
    assert [(r.window, r.width, r.height) for r in small] == [((0, 0, 100, 80), 100, 80)]

    crop = next(r for r in tiled.positives if r.window == (96, 0, 224, 128))  # holds the dog at (100, 60)
    index = tiled.records.index(crop)
    image, target = tiled[index]
    expected = torch.from_numpy(pixels[0:128, 96:224, ::-1].copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 60.0, 44.0, 100.0]]))
    assert target["labels"].tolist() == [2] and target["image_id"] == index
    # The 10 x 10 box in the corner is in the two right-hand crops of the bottom row, clipped to none.
    corner = [r for r in tiled.positives if r.window[0] == 172 and r.window[1] == 72]
    np.testing.assert_allclose(corner[0].boxes, [[118, 118, 128, 128]])


def test_negatives_are_a_seeded_choice_per_epoch_the_same_whatever_the_loader_seed(tmp_path):
    images = {f"{i}.png": (256, 256) for i in range(4)}
    data = write_dataset("coco", tmp_path, images, {"0.png": [("cat", 10, 10, 40, 40)]})
    tiles = TilesConfig(size=64, overlap=0.0, min_visible=0.5, negative_ratio=3.0)
    source = load_dataset(data.config)
    rank0, rank1 = TiledDataset(source, tiles, seed=5), TiledDataset(source, tiles, seed=5)
    assert len(rank0.positives) == 1 and len(rank0.negatives) == 63 and len(rank0) == 4  # round(3.0 x 1) negatives
    # As builders.build_train_loader: each rank its own loader seed, the dataset seeded by train.seed.
    loaders = [build_loader(d, 2, train=True, seed=5 + 100_003 * rank) for rank, d in enumerate((rank0, rank1))]
    chosen = []
    for epoch in range(4):
        for loader in loaders:
            loader.set_epoch(epoch)
        assert [r.image_id for r in rank0.records] == [r.image_id for r in rank1.records]
        assert len(rank0) == 4 and len(rank0.records) == 4
        chosen.append(tuple(r.image_id for r in rank0.records[1:]))
    assert len(set(chosen)) == 4  # a new draw each epoch
    rank0.set_epoch(2)
    assert tuple(r.image_id for r in rank0.records[1:]) == chosen[2]  # and the same draw again for that epoch
    ids = lambda dataset: [r.image_id for r in dataset.records]  # noqa: E731
    assert ids(TiledDataset(source, tiles, seed=6)) != ids(TiledDataset(source, tiles, seed=5))


def test_no_object_in_any_crop_is_an_error_naming_the_keys(tmp_path):
    data = write_dataset("coco", tmp_path, {"a.png": (200, 200)}, {"a.png": [("cat", 90, 90, 110, 110)]})
    with pytest.raises(DataError, match=r"data.tiles.*min_visible 0.9"):
        # Four 100 px crops meet at the box's centre: each sees a quarter of it.
        TiledDataset(load_dataset(data.config), TilesConfig(size=100, overlap=0.0, min_visible=0.9), seed=0)
    with pytest.raises(ConfigError, match="data.tiles.min_visible"):
        TiledDataset(load_dataset(data.config), TilesConfig(size=100, min_visible=0.0))


def tiles_config(tmp_path, train, val, *extra):
    return load_config(None, [f"data.train={{format: coco, annotations: {train.config.annotations}, images: "
                              f"{train.config.images}}}",
                              f"data.val={{format: coco, annotations: {val.config.annotations}, images: "
                              f"{val.config.images}}}", "data.tiles.size=64", *extra])


class Log:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)


def test_a_val_image_never_becomes_a_training_crop(tmp_path):
    train = write_dataset("coco", tmp_path / "train", {"a.png": (128, 128), "b.png": (128, 128)},
                          {"a.png": [("cat", 10, 10, 40, 40)], "b.png": [("dog", 10, 10, 40, 40)]})
    val = write_dataset("coco", tmp_path / "val", {"c.png": (128, 128)}, {"c.png": [("cat", 10, 10, 40, 40)]})
    # The same files as val (another annotation file pointing at the training images folder).
    shared = write_dataset("coco", tmp_path / "shared", {"b.png": (128, 128)}, {"b.png": [("dog", 1, 1, 30, 30)]},
                           write_images=False)
    shared.config.images = train.config.images

    with pytest.raises(DataError, match=r"1 val image\(s\) are also training images .*b.png"):
        build_datasets(tiles_config(tmp_path, train, shared), Log())
    log = Log()
    train_set, val_set = build_datasets(tiles_config(tmp_path, train, val), log)
    assert isinstance(train_set, TiledDataset) and len(val_set) == 1 and val_set.records[0].width == 128
    assert any("data.tiles: 64 px crops" in line and "tiles per image" in line for line in log.lines)
    # Without data.tiles the same split in both stays allowed (a quick overfit check).
    train_set, _ = build_datasets(tiles_config(tmp_path, train, shared, "data.tiles.size=0"), Log())
    assert not isinstance(train_set, TiledDataset)
    check_no_shared_images(train_set.records, val_set.records)  # different files: no error


def test_the_accounting_counts_crops_and_tiles_per_image():
    text = Accounting(308, 4, False, 3, None, source_images=8).describe()
    assert text.startswith("308 training crops (data.tiles: 8 images x 38.5 crops per image), batch 4 -> 77 iterations")
