import json
import re

import numpy as np
import pytest
from data_helpers import real_json, write_blank_images, write_coco, write_image

from detector.config import DatasetConfig
from detector.data import CategoryMap, load_dataset, read_coco
from detector.data.records import SKIPPED_ANNOTATION, SKIPPED_IMAGE
from detector.errors import DataError


def json_counts(path):
    data = json.loads(path.read_text())
    per_id = {}
    for ann in data["annotations"]:
        per_id[ann["category_id"]] = per_id.get(ann["category_id"], 0) + 1
    return data, per_id


@pytest.fixture(scope="module")
def raccoon_images(tmp_path_factory):
    """Plain images at the sizes the real raccoon annotations give (the reader checks each file)."""
    root = tmp_path_factory.mktemp("raccoon")
    for name in ("raccoon/coco_train.json", "raccoon/coco_val.json"):
        write_blank_images(real_json(name), root)
    return root


@pytest.mark.parametrize("name, images, boxes", [("raccoon/coco_train.json", 160, 173),
                                                  ("raccoon/coco_val.json", 40, 44)])
def test_raccoon_counts(name, images, boxes, raccoon_images):
    path = real_json(name)
    data, per_id = json_counts(path)
    records, cmap, report = read_coco(path, raccoon_images)
    assert len(records) == images == len(data["images"])
    assert sum(len(r.boxes) for r in records) == boxes == len(data["annotations"])
    assert cmap.to_dict() == {"ids": [1], "names": ["raccoon"]}
    assert report.per_class == {"raccoon": boxes} and report.num_empty == 0
    assert report.data_lost == []  # nothing dropped; 3 boxes per file overshoot the edge and are clipped
    assert all(r.labels.tolist() == [1] * len(r.labels) for r in records)


def test_raccoon_train_and_val_make_217_boxes_and_share_the_map(raccoon_images):
    train = load_dataset(DatasetConfig(format="coco", annotations=str(real_json("raccoon/coco_train.json")),
                                       images=str(raccoon_images)))
    val = load_dataset(DatasetConfig(format="coco", annotations=str(real_json("raccoon/coco_val.json")),
                                     images=str(raccoon_images)), train.category_map)
    assert val.category_map is train.category_map
    assert train.report.num_boxes + val.report.num_boxes == 217
    assert "160 images, 173 boxes, 1 classes" in train.summary()


def test_bccd_classes_and_per_class_counts_from_the_json():
    path = real_json("bccd/coco_sample.json")  # 3 real trainval images and their 51 boxes
    data, per_id = json_counts(path)
    records, cmap, report = read_coco(path)
    assert cmap.names == ("RBC", "WBC", "Platelets") and cmap.ids == (1, 2, 3)
    assert report.per_class == {"RBC": per_id[1], "WBC": per_id[2], "Platelets": per_id[3]}
    assert report.per_class == {"RBC": 44, "WBC": 3, "Platelets": 4}
    assert len(records) == 3 and report.num_boxes == 51 and report.data_lost == []
    labels = np.concatenate([r.labels for r in records])
    assert np.bincount(labels).tolist() == [0, 44, 3, 4]


def test_bccd_first_box_is_xywh_converted_to_xyxy():
    path = real_json("bccd/coco_sample.json")
    data = json.loads(path.read_text())
    first = data["annotations"][0]  # image 1, WBC, bbox [208.0, 141.6, 184.8, 159.2]
    records, cmap, _ = read_coco(path)
    record = next(r for r in records if r.image_id == first["image_id"])
    assert record.path == path.parent / data["images"][0]["file_name"]
    x, y, w, h = first["bbox"]
    np.testing.assert_allclose(record.boxes[0], [208.0, 141.6, 392.8, 300.8], rtol=0, atol=1e-4)
    np.testing.assert_allclose(record.boxes[0], [x, y, x + w, y + h], atol=1e-4)
    assert cmap.name_of(int(record.labels[0])) == "WBC"


def coco_case(tmp_path):
    """Three images: one with a normal, a crowd and an out-of-image box; one negative; one missing."""
    write_image(tmp_path / "imgs" / "a.png", 64, 48)
    write_image(tmp_path / "imgs" / "b.png", 40, 40)
    images = [{"id": 10, "file_name": "imgs/a.png", "width": 64, "height": 48},
              {"id": 11, "file_name": "imgs/b.png", "width": 40, "height": 40},
              {"id": 12, "file_name": "imgs/missing.png", "width": 40, "height": 40}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 5, "bbox": [4, 6, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 9, "bbox": [30, 10, 10, 10], "iscrowd": 1},
        {"id": 3, "image_id": 10, "category_id": 9, "bbox": [50, 40, 30, 30], "iscrowd": 0},  # -> [50, 40, 64, 48]
        {"id": 4, "image_id": 10, "category_id": 5, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 99, "category_id": 5, "bbox": [1, 1, 5, 5]},  # no such image
        {"id": 6, "image_id": 10, "category_id": 42, "bbox": [1, 1, 5, 5]},  # no such category
        {"id": 7, "image_id": 12, "category_id": 5, "bbox": [1, 1, 5, 5]},  # image file missing
    ]
    categories = [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}]
    return write_coco(tmp_path / "ann.json", images, annotations, categories)


def test_coco_fixture_boxes_crowd_negative_and_every_problem_named(tmp_path):
    path = coco_case(tmp_path)
    records, cmap, report = read_coco(path)
    assert cmap.ids == (5, 9) and cmap.names == ("cat", "dog")  # labels in id order
    assert [r.image_id for r in records] == [10, 11]
    a, b = records
    np.testing.assert_array_equal(a.boxes, [[4, 6, 24, 16], [30, 10, 40, 20], [50, 40, 64, 48]])
    assert a.labels.tolist() == [1, 2, 2] and a.iscrowd.tolist() == [False, True, False]
    assert len(b.boxes) == 0  # negative, kept
    assert (report.num_images, report.num_boxes, report.num_crowd, report.num_empty) == (2, 2, 1, 1)
    problems = [str(p) for p in report.problems]
    assert any("annotation id 3 (image id 10): clipped" in p for p in problems)
    assert any("annotation id 4 (image id 10): dropped box" in p and "zero or negative" in p for p in problems)
    assert any(p.startswith(f"{path}: annotation id 5: skipped annotation: image id 99") for p in problems)
    assert any("annotation id 6: skipped annotation: category id 42" in p for p in problems)
    assert any("image id 12 (imgs/missing.png): skipped image: image file not found" in p for p in problems)
    assert report.count(SKIPPED_ANNOTATION) == 2 and report.count(SKIPPED_IMAGE) == 1
    with pytest.raises(DataError, match="problems \\(data.policy=strict\\)"):
        load_dataset(DatasetConfig(format="coco", annotations=str(path)), policy="strict")


def test_coco_duplicate_image_id_reported_first_kept(tmp_path):
    write_image(tmp_path / "a.png", 20, 20)
    write_image(tmp_path / "b.png", 30, 30)
    path = write_coco(tmp_path / "ann.json",
                      [{"id": 1, "file_name": "a.png", "width": 20, "height": 20},
                       {"id": 1, "file_name": "b.png", "width": 30, "height": 30}],
                      [], [{"id": 1, "name": "x"}])
    records, _, report = read_coco(path)
    assert [r.path.name for r in records] == ["a.png"]
    assert str(report.problems[0]).startswith(f"{path}: image id 1: skipped image: duplicate image id (images[1], b.png)")


def test_coco_size_mismatch_and_missing_size(tmp_path):
    write_image(tmp_path / "a.png", 20, 30)
    write_image(tmp_path / "b.png", 50, 10)
    path = write_coco(tmp_path / "ann.json",
                      [{"id": 1, "file_name": "a.png", "width": 30, "height": 20},  # swapped: wrong
                       {"id": 2, "file_name": "b.png"}],  # no size: read from the file
                      [], [{"id": 1, "name": "x"}])
    records, _, report = read_coco(path)
    assert [(r.image_id, r.width, r.height) for r in records] == [(2, 50, 10)]
    assert "a.png is 20x30 (EXIF orientation rotates it) but the annotation says 30x20" in str(report.problems[0])


def test_coco_images_folder_overrides_the_json_folder(tmp_path):
    write_image(tmp_path / "elsewhere" / "a.png", 20, 20)
    path = write_coco(tmp_path / "ann" / "ann.json", [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
                      [], [{"id": 1, "name": "x"}])
    records, _, _ = read_coco(path, images=tmp_path / "elsewhere")
    assert records[0].path == tmp_path / "elsewhere" / "a.png"


def test_coco_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataError, match=re.escape(f"{path}: not valid JSON: line 2 column")):
        read_coco(path)
    path.write_text('{"annotations": [], "categories": []}')
    with pytest.raises(DataError, match="no 'images' list"):
        read_coco(path)
    path.write_text('{"images": [{"file_name": "a.png"}], "categories": []}')
    with pytest.raises(DataError, match="images\\[0\\] needs 'id' and 'file_name'"):
        read_coco(path)
    with pytest.raises(DataError, match="not found"):
        read_coco(tmp_path / "nope.json")


def test_val_set_with_the_training_map(tmp_path):
    write_image(tmp_path / "a.png", 20, 20)
    image = [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}]
    train_map = CategoryMap((5, 9), ("cat", "dog"))
    # same ids, only some used: the training labels are kept
    path = write_coco(tmp_path / "val.json", image, [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}],
                      [{"id": 9, "name": "dog"}, {"id": 77, "name": "bird"}])
    records, cmap, report = read_coco(path, category_map=train_map)
    assert cmap is train_map and records[0].labels.tolist() == [2]
    assert "category 77 ('bird') is not in the training set and has no boxes here" in report.summary()
    # a class the training set never saw, with boxes: refused, naming it
    path = write_coco(tmp_path / "val2.json", image, [{"id": 1, "image_id": 1, "category_id": 77, "bbox": [1, 1, 5, 5]}],
                      [{"id": 77, "name": "bird"}])
    with pytest.raises(DataError, match="categories 77 \\('bird'\\) are not in the training set"):
        read_coco(path, category_map=train_map)
    # same id, another name: the ids do not mean the same classes
    path = write_coco(tmp_path / "val3.json", image, [], [{"id": 5, "name": "horse"}])
    with pytest.raises(DataError, match="category id 5 is 'horse' here but 'cat'"):
        read_coco(path, category_map=train_map)
