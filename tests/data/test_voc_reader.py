import re

import numpy as np
import pytest
from data_helpers import write_image

from detector.config import DatasetConfig
from detector.data import CategoryMap, load_dataset, read_voc
from detector.errors import DataError


def voc_xml(filename, width, height, objects):
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, box, difficult in objects:
        x1, y1, x2, y2 = box
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def make_voc(root):
    """Three images (100x80): dog+cat (one difficult), a negative, one with bad boxes."""
    entries = {
        "000001": [("dog", (11, 21, 50, 60), 0), ("cat", (1, 1, 30, 30), 1)],
        "000002": [],
        "000003": [("person", (41, 41, 40, 70), 0),  # xmin - 1 = 40 = xmax: zero width, dropped
                   ("cat", (61, 31, 120, 70), 0)],  # xmax beyond the 100 px image: clipped
    }
    for image_id, objects in entries.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", 100, 80)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.jpg", 100, 80, objects))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n000003\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    return root


def test_voc_boxes_one_based_to_zero_based_difficult_and_sorted_names(tmp_path):
    root = make_voc(tmp_path / "voc")
    records, cmap, report = read_voc(root)
    assert cmap.names == ("cat", "dog", "person") and cmap.ids == (1, 2, 3)  # sorted; VOC ids = positions
    assert [r.image_id for r in records] == ["000001", "000002", "000003"]
    first = records[0]
    np.testing.assert_array_equal(first.boxes, [[10, 20, 50, 60], [0, 0, 30, 30]])  # (x1 - 1, y1 - 1, x2, y2)
    assert first.labels.tolist() == [2, 1] and first.iscrowd.tolist() == [False, True]  # difficult ~ crowd
    assert len(records[1].boxes) == 0  # negative, kept
    np.testing.assert_array_equal(records[2].boxes, [[60, 30, 100, 70]])
    problems = [str(p) for p in report.problems]
    xml3 = root / "Annotations" / "000003.xml"
    assert f"{xml3}: object 1 (person): dropped box: box [40, 40, 40, 70] has zero or negative width/height" in problems
    assert f"{xml3}: object 2 (cat): clipped: box [60, 30, 120, 70] clipped to the 100x80 image" in problems
    assert report.per_class == {"cat": 1, "dog": 1, "person": 0} and report.num_crowd == 1


def test_voc_split_file_and_val_with_the_training_map(tmp_path):
    root = make_voc(tmp_path / "voc")
    train = load_dataset(DatasetConfig(format="voc", root=str(root), split="train"))
    assert [r.image_id for r in train.records] == ["000001", "000003"]
    val = load_dataset(DatasetConfig(format="voc", root=str(root), split="val"), train.category_map)
    assert val.category_map is train.category_map and len(val) == 1
    with pytest.raises(DataError, match="classes 'dog' \\(e.g. .*000001.xml\\), 'person' \\(e.g. .*000003.xml\\) are not in the training set's classes"):
        read_voc(root, "train", CategoryMap((1,), ("cat",)))
    with pytest.raises(DataError, match="split file not found"):
        read_voc(root, "test")


def test_voc_missing_image_reported_and_malformed_xml_names_file_and_line(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "JPEGImages" / "000002.jpg").unlink()
    records, _, report = read_voc(root)
    assert len(records) == 2
    assert "000002.xml: image 000002: skipped image: image file not found" in str(report.problems[0])
    bad = root / "Annotations" / "000002.xml"
    bad.write_text("<annotation>\n<object><name>dog</name>\n</annotation>")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not valid XML: line 3")):
        read_voc(root)
    bad.write_text(voc_xml("000002.jpg", 100, 80, [("dog", (1, "abc", 5, 5), 0)]))
    with pytest.raises(DataError, match=re.escape(f"{bad}: object 1 (dog): <bndbox/ymin> is 'abc', not a number")):
        read_voc(root)
