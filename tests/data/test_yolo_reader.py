import re

import numpy as np
import pytest
from data_helpers import write_image

from detector.config import DatasetConfig
from detector.data import CategoryMap, load_dataset, read_yolo
from detector.data.records import SKIPPED_ANNOTATION
from detector.errors import DataError


def make_yolo(root, names_file="classes.txt"):
    """train: a.png 200x100 with two boxes (+ one degenerate, one crossing the edge), b.png
    negative (empty label file), c.png negative (no label file); val: d.png."""
    for split, name in [("train", "a"), ("train", "b"), ("train", "c"), ("val", "d")]:
        write_image(root / "images" / split / f"{name}.png", 200, 100)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # -> [80, 30, 120, 70]
        "\n"
        "1 0.25 0.25 0.1 0.1\n"  # -> [40, 20, 60, 30]
        "1 0.5 0.5 0.0 0.3\n"  # zero width: dropped (line 4)
        "0 0.95 0.5 0.2 0.2\n"  # -> [170, 40, 210, 60], clipped to x2 = 200 (line 5)
    )
    (root / "labels" / "train" / "b.txt").write_text("")
    (root / "labels" / "val" / "d.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    if names_file == "classes.txt":
        (root / "classes.txt").write_text("car\nperson\n")
    else:
        (root / "data.yaml").write_text("path: .\nnames:\n  0: car\n  1: person\n")
    return root


@pytest.mark.parametrize("names_file", ["classes.txt", "data.yaml"])
def test_yolo_normalized_to_pixels_negatives_and_problems(tmp_path, names_file):
    root = make_yolo(tmp_path / "yolo", names_file)
    records, cmap, report = read_yolo(root, "train")
    assert cmap.names == ("car", "person") and cmap.ids == (0, 1)  # YOLO indices are the ids
    assert [r.image_id for r in records] == ["a", "b", "c"]
    a = records[0]
    assert (a.width, a.height) == (200, 100)
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [40, 20, 60, 30], [170, 40, 200, 60]], atol=1e-4)
    assert a.labels.tolist() == [1, 2, 1]
    assert len(records[1].boxes) == 0 and len(records[2].boxes) == 0  # empty and missing label files
    label_file = root / "labels" / "train" / "a.txt"
    assert [str(p).split(": ", 1)[0] for p in report.problems] == [str(label_file)] * 2
    assert [p.where for p in report.problems] == ["line 4", "line 5"]
    assert report.num_empty == 2 and report.per_class == {"car": 2, "person": 1}


def test_yolo_val_uses_the_training_map(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    train = load_dataset(DatasetConfig(format="yolo", root=str(root), split="train"))
    val = load_dataset(DatasetConfig(format="yolo", root=str(root), split="val"), train.category_map)
    assert val.category_map is train.category_map
    np.testing.assert_allclose(val.records[0].boxes, [[0, 0, 200, 100]])
    with pytest.raises(DataError, match="differ from the training set's \\['person', 'car'\\]"):
        read_yolo(root, "val", category_map=CategoryMap((0, 1), ("person", "car")))


def test_yolo_names_file_option_and_missing_names(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    (tmp_path / "my_names.txt").write_text("a\nb\nc\n")
    _, cmap, _ = read_yolo(root, "train", names=tmp_path / "my_names.txt")
    assert cmap.names == ("a", "b", "c")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class names"):
        read_yolo(root, "train")


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "line 2: expected 'class cx cy w h' (5 values), got '0 0.5 0.5 0.2'"),
    ("x 0.5 0.5 0.2 0.2", "line 2: expected an integer class and 4 numbers"),
])
def test_yolo_malformed_line_names_file_and_line(tmp_path, line, message):
    root = make_yolo(tmp_path / "yolo")
    label_file = root / "labels" / "train" / "b.txt"
    label_file.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError, match=re.escape(f"{label_file}: {message}")):
        read_yolo(root, "train")


def test_yolo_unknown_class_skips_the_line_and_reports_it_like_an_unknown_coco_category(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    label_file = root / "labels" / "train" / "b.txt"
    label_file.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n-1 0.5 0.5 0.2 0.2\n")
    records, _, report = read_yolo(root, "train")
    assert records[1].labels.tolist() == [1]  # line 1 kept
    skipped = [str(p) for p in report.problems if p.kind == SKIPPED_ANNOTATION]
    assert skipped == [f"{label_file}: line 2: skipped annotation: class 7 is outside 0..1 (2 names)",
                       f"{label_file}: line 3: skipped annotation: class -1 is outside 0..1 (2 names)"]


def test_yolo_unreadable_image_is_reported_and_skipped(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    (root / "images" / "train" / "b.png").write_bytes(b"not an image")
    records, _, report = read_yolo(root, "train")
    assert [r.image_id for r in records] == ["a", "c"]
    assert any("b.png: cannot read the image header" in str(p) for p in report.problems)
