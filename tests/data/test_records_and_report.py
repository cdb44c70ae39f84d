import json

import numpy as np
import pytest

from detector.data.records import (
    CLIPPED,
    DROPPED_BOX,
    CategoryMap,
    DatasetReport,
    ImageRecord,
    clean_boxes,
    raise_if_strict,
)
from detector.errors import DataError, DetectorError


def test_category_map_round_trip_and_lookups():
    cmap = CategoryMap((3, 7, 11), ("cat", "dog", "bird"))
    assert cmap.num_classes == 3 and len(cmap) == 3
    assert [cmap.label_of(i) for i in (3, 7, 11)] == [1, 2, 3]
    assert [cmap.id_of(label) for label in (1, 2, 3)] == [3, 7, 11]
    assert cmap.name_of(2) == "dog" and cmap.label_of_name("bird") == 3
    plain = cmap.to_dict()
    assert plain == {"ids": [3, 7, 11], "names": ["cat", "dog", "bird"]}
    assert CategoryMap.from_dict(json.loads(json.dumps(plain))) == cmap  # survives JSON / checkpoints


def test_category_map_refuses_unknowns_and_background():
    cmap = CategoryMap((1, 2), ("a", "b"))
    with pytest.raises(DataError, match="category id 5"):
        cmap.label_of(5)
    with pytest.raises(DataError, match="label 0 is outside 1..2"):
        cmap.name_of(0)
    with pytest.raises(DataError, match="appear more than once"):
        CategoryMap((1, 1), ("a", "b"))
    with pytest.raises(DataError, match="expected"):
        CategoryMap.from_dict({"ids": [1]})


def test_data_error_is_a_detector_error_and_a_value_error():
    assert issubclass(DataError, DetectorError) and issubclass(DataError, ValueError)


def test_clean_boxes_clips_and_drops_naming_each_box():
    report = DatasetReport("ann.json", "coco")
    boxes = np.array([
        [10, 10, 50, 40],  # fine
        [-5, 20, 30, 130],  # partly outside a 100x120 image: clipped to [0, 20, 30, 120]
        [20, 20, 20, 60],  # zero width
        [30, 30, 10, 60],  # negative width
        [np.nan, 0, 10, 10],
        [150, 10, 170, 20],  # wholly outside
    ], float)
    where = [f"annotation id {i}" for i in range(6)]
    cleaned, keep = clean_boxes(boxes, 100, 120, "ann.json", where, report)
    assert keep.tolist() == [True, True, False, False, False, False]
    np.testing.assert_array_equal(cleaned[:2], [[10, 10, 50, 40], [0, 20, 30, 120]])
    assert [(p.kind, p.where) for p in report.problems] == [
        (CLIPPED, "annotation id 1"),
        (DROPPED_BOX, "annotation id 2"),
        (DROPPED_BOX, "annotation id 3"),
        (DROPPED_BOX, "annotation id 4"),
        (DROPPED_BOX, "annotation id 5"),
    ]
    assert "NaN" in report.problems[3].message and "outside" in report.problems[4].message
    assert str(report.problems[0]).startswith("ann.json: annotation id 1: clipped: box [-5, 20, 30, 130]")


def test_report_counts_summary_and_strict_policy(tmp_path):
    cmap = CategoryMap((1, 2), ("cat", "dog"))
    records = [
        ImageRecord(1, tmp_path / "a.jpg", 100, 80, [[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9]], [1, 2, 2],
                    [False, False, True]),
        ImageRecord(2, tmp_path / "b.jpg", 100, 80),  # a negative
        ImageRecord(3, tmp_path / "c.jpg", 100, 80, [[0, 0, 10, 10]], [1], [True]),  # only a crowd box
    ]
    report = DatasetReport("ann.json", "coco")
    report.add(CLIPPED, "ann.json", "annotation id 9", "box clipped")
    report.finish(records, cmap)
    assert (report.num_images, report.num_boxes, report.num_crowd, report.num_empty) == (3, 2, 2, 2)
    assert report.per_class == {"cat": 1, "dog": 1}
    text = report.summary()
    assert "3 images, 2 boxes (+2 crowd/difficult, ignored in training), 2 classes" in text
    assert "1 boxes clipped" in text and "annotation id 9" in text
    raise_if_strict(report, "strict")  # clipping is a fix, not a loss
    report.add(DROPPED_BOX, "ann.json", "annotation id 10", "zero width")
    raise_if_strict(report, "skip")
    with pytest.raises(DataError, match="annotation id 10: dropped box: zero width"):
        raise_if_strict(report, "strict")


def test_image_record_normalizes_dtypes_and_checks_lengths(tmp_path):
    record = ImageRecord("x", str(tmp_path / "x.jpg"), 10, 10, [[1, 2, 3, 4]], [1], [0])
    assert record.boxes.dtype == np.float32 and record.boxes.shape == (1, 4)
    assert record.labels.dtype == np.int64 and record.iscrowd.dtype == bool
    assert ImageRecord(1, tmp_path, 5, 5).boxes.shape == (0, 4)
    with pytest.raises(DataError, match="2 boxes, 1 labels"):
        ImageRecord(1, tmp_path, 5, 5, [[0, 0, 1, 1], [0, 0, 2, 2]], [1], [False, False])
