import hashlib
import json
import zlib

import numpy as np
import pytest

from detector.config import DatasetConfig
from detector.data import load_dataset, make_synthetic_dataset
from detector.data.synthetic import (CLASSES, LARGE_MAX_SIZE, LARGE_MIN_SIZE, MAX_SIZE, MIN_SIZE, draw_image,
                                     draw_large_image)


def fingerprint(annotations):
    """Hash of the JSON and of every image file's bytes."""
    folder = annotations.parent
    data = json.loads(annotations.read_text())
    files = {im["file_name"]: hashlib.sha256((folder / im["file_name"]).read_bytes()).hexdigest() for im in data["images"]}
    return hashlib.sha256(annotations.read_bytes()).hexdigest(), files


def test_same_seed_same_files_other_seed_or_split_other_files(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", "train", 4, seed=0)
    b = make_synthetic_dataset(tmp_path / "b", "train", 4, seed=0)
    assert a == tmp_path / "a" / "train" / "instances.json"
    assert fingerprint(a) == fingerprint(b)
    other_seed = fingerprint(make_synthetic_dataset(tmp_path / "c", "train", 4, seed=1))
    val = fingerprint(make_synthetic_dataset(tmp_path / "a", "val", 4, seed=0))
    for other in (other_seed, val):
        assert other[0] != fingerprint(a)[0]
        assert not set(other[1].values()) & set(fingerprint(a)[1].values())  # no image shared


def test_files_are_reused_when_parameters_match_and_redrawn_when_not(tmp_path):
    path = make_synthetic_dataset(tmp_path, "train", 3, seed=0)
    stamp, first_three = path.stat().st_mtime_ns, fingerprint(path)[1]
    assert make_synthetic_dataset(tmp_path, "train", 3, seed=0) == path and path.stat().st_mtime_ns == stamp
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest == {"generator_version": 1, "split": "train", "num_images": 3, "seed": 0, "classes": list(CLASSES)}
    make_synthetic_dataset(tmp_path, "train", 5, seed=0)
    data = json.loads(path.read_text())
    assert len(data["images"]) == 5 and sorted(p.name for p in (tmp_path / "train" / "images").iterdir())[-1] == "000004.jpg"
    assert {k: v for k, v in fingerprint(path)[1].items() if k in first_three} == first_three  # image i: (seed, split, i)
    assert [p.name for p in tmp_path.iterdir()] == ["train"]  # no scratch folder left behind


def test_boxes_are_the_exact_extent_of_the_drawn_shapes():
    """Draw an image with and without its objects (same random state): for every object that no
    other box touches, the pixels that changed span exactly its box."""
    checked = 0
    for index in range(12):
        seed = [0, zlib.crc32(b"train"), index]
        image, objects = draw_image(np.random.default_rng(seed))
        background, _ = draw_image(np.random.default_rng(seed), objects=False)
        changed = np.abs(image.astype(int) - background.astype(int)).max(axis=2) > 0
        boxes = [box for _, box, _ in objects]
        union = np.zeros_like(changed)
        for x1, y1, x2, y2 in boxes:
            union[y1:y2, x1:x2] = True
        assert not (changed & ~union).any()  # nothing drawn outside the boxes
        for category, box, area in objects:
            x1, y1, x2, y2 = box
            assert MIN_SIZE - 1 <= max(x2 - x1, y2 - y1) <= MAX_SIZE * 1.2 + 1 and 1 <= category <= 4
            if any(b is not box and not (b[2] <= x1 or x2 <= b[0] or b[3] <= y1 or y2 <= b[1]) for b in boxes):
                continue
            ys, xs = np.nonzero(changed[y1:y2, x1:x2])
            assert [xs.min() + x1, ys.min() + y1, xs.max() + 1 + x1, ys.max() + 1 + y1] == box
            assert len(xs) <= area <= (x2 - x1) * (y2 - y1)  # area: the shape's pixel count
            checked += 1
    assert checked >= 20


def test_load_dataset_synthetic_reads_it_with_the_coco_reader(tmp_path):
    train = load_dataset(DatasetConfig(format="synthetic", root=str(tmp_path), split="train", num_images=8, seed=3))
    val = load_dataset(DatasetConfig(format="synthetic", root=str(tmp_path), split="val", num_images=4, seed=3),
                       train.category_map)
    assert train.category_map.names == CLASSES and train.category_map.ids == (1, 2, 3, 4)
    assert len(train) == 8 and len(val) == 4 and train.report.data_lost == [] and train.report.problems == []
    assert train.report.num_boxes > 8
    image, target = train[0]
    record = train.records[0]
    assert image.shape == (3, record.height, record.width) and 320 <= record.width <= 480
    assert ((target["labels"] >= 1) & (target["labels"] <= 4)).all()


def test_bad_synthetic_parameters():
    with pytest.raises(ValueError, match="plain name"):
        make_synthetic_dataset("/tmp/unused", "../x", 3)
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_dataset("/tmp/unused", "train", 0)


def test_the_demo_scene_draws_the_pixels_of_generator_version_1():
    """The large scene came later: the default scene's images and boxes must not have moved (a
    change would need GENERATOR_VERSION bumped, redrawing every cached demo set)."""
    digest = hashlib.sha256()
    for index in range(6):
        image, objects = draw_image(np.random.default_rng([0, 7, index]))
        digest.update(image.tobytes())
        digest.update(repr(objects).encode())
    assert digest.hexdigest() == "626f7d391df5cc26f16f02f7fa8dbf671708b643907c4fd13d601357524a4252"


def test_the_large_scene_has_small_shapes_some_across_seams_with_exact_boxes():
    seed = [0, zlib.crc32(b"train"), 0]
    image, objects = draw_large_image(np.random.default_rng(seed))
    background, _ = draw_large_image(np.random.default_rng(seed), objects=False)
    assert image.shape == (1500, 2000, 3) and 20 <= len(objects) <= 40
    changed = np.abs(image.astype(int) - background.astype(int)).max(axis=2) > 0
    boxes = [box for _, box, _ in objects]
    union = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes:
        union[y1:y2, x1:x2] = True
    assert not (changed & ~union).any()
    checked = 0
    for _, box, _ in objects:
        x1, y1, x2, y2 = box
        assert LARGE_MIN_SIZE - 1 <= max(x2 - x1, y2 - y1) <= LARGE_MAX_SIZE * 1.2 + 1
        if any(b is not box and not (b[2] <= x1 or x2 <= b[0] or b[3] <= y1 or y2 <= b[1]) for b in boxes):
            continue
        ys, xs = np.nonzero(changed[y1:y2, x1:x2])
        assert [xs.min() + x1, ys.min() + y1, xs.max() + 1 + x1, ys.max() + 1 + y1] == box
        checked += 1
    assert checked >= 15
    seams = [line for step in (400, 512) for line in range(step, 2000, step)]
    across = [b for b in boxes if any(b[0] < s < b[2] or b[1] < s < b[3] for s in seams)]
    assert len(across) >= 5  # about a third are centred on one (and a few cross one by chance)


def test_the_large_scene_lives_beside_the_demo_set_with_its_own_manifest(tmp_path):
    path = make_synthetic_dataset(tmp_path, "val", 1, seed=0, scene="large")
    assert path == tmp_path / "large-val" / "instances.json"
    manifest = json.loads((tmp_path / "large-val" / "manifest.json").read_text())
    assert manifest["scene"] == "large" and manifest["generator_version"] == 1
    data = json.loads(path.read_text())
    assert [(i["width"], i["height"]) for i in data["images"]] == [(2000, 1500)]
    with pytest.raises(ValueError, match="scene"):
        make_synthetic_dataset(tmp_path, "val", 1, scene="huge")


def test_a_config_names_an_unknown_scene():
    from detector import load_config
    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.train.scene must be shapes or large, got 'huge'"):
        load_config(None, ["data.train={format: synthetic, split: train, scene: huge}"])


def test_class_weights_make_an_imbalanced_variant_beside_the_balanced_set(tmp_path):
    balanced = make_synthetic_dataset(tmp_path, "train", 30, seed=0)
    imbalanced = make_synthetic_dataset(tmp_path, "train", 30, seed=0, class_weights=[1.0, 1.0, 1.0, 0.05])
    assert imbalanced == tmp_path / "train-w1_1_1_0.05" / "instances.json" and balanced.is_file()
    count = lambda path: np.bincount([a["category_id"] for a in json.loads(path.read_text())["annotations"]],  # noqa: E731
                                     minlength=5)[1:]
    assert count(balanced)[3] >= 15 and count(imbalanced)[3] <= 3  # crosses: ~a quarter of the boxes, then ~1.6%
    only_squares = make_synthetic_dataset(tmp_path, "train", 5, seed=0, class_weights=[0, 1, 0, 0])
    assert count(only_squares)[[0, 2, 3]].sum() == 0 and count(only_squares)[1] > 0
    config = DatasetConfig(format="synthetic", root=str(tmp_path), split="train", num_images=30,
                           class_weights=[1.0, 1.0, 1.0, 0.05])
    assert load_dataset(config).summary() == load_dataset(DatasetConfig(format="coco", annotations=str(imbalanced))).summary()


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 1, 1, -1], [0, 0, 0, 0]])
def test_bad_class_weights_are_refused(tmp_path, weights):
    from detector import ConfigError, load_config

    with pytest.raises(ConfigError, match="class_weights"):
        make_synthetic_dataset(tmp_path, "train", 2, class_weights=weights)
    with pytest.raises(ConfigError, match="data.train.class_weights"):
        load_config(None, [f"data.train={{format: synthetic, root: {tmp_path}, class_weights: {weights}}}"])
