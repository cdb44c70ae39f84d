"""Fuzzing the readers: whatever an annotation file holds (wrong JSON types, random bytes, XML
fragments, txt lines with junk, NaN, inf, huge or negative numbers, wrong field counts), a
reader returns valid records or raises a `DataError` with a message, never anything else."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import yaml
from data_helpers import write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.data import CategoryMap, read_coco, read_voc, read_yolo
from detector.errors import DataError

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IMAGES = {"a.png": (20, 10), "b.jpg": (16, 16)}
GIVEN_MAP = CategoryMap((0, 1), ("cat", "dog"))


def check_outcome(read) -> None:
    """The property: valid records, or a DataError with a non-empty message."""
    try:
        records, category_map, report = read()
    except DataError as error:
        assert str(error).strip()
        return
    for record in records:
        assert isinstance(record.width, int) and isinstance(record.height, int)
        assert record.width > 0 and record.height > 0
        boxes = record.boxes
        assert boxes.dtype == np.float32 and boxes.shape == (len(record.labels), 4) == (len(record.iscrowd), 4)
        assert np.isfinite(boxes).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()
        assert ((record.labels >= 1) & (record.labels <= category_map.num_classes)).all()
    assert report.summary()


def write_images(folder: Path) -> None:
    for name, (width, height) in IMAGES.items():
        write_image(folder / name, width, height)


# ---------------------------------------------------------------- values
# Mostly well-formed structure with junk in places, so that most examples get past the
# structural checks to the boxes, sizes and paths (pure junk stops at the first check).


def mostly(strategy, other):
    """`strategy` nine times in ten, else `other`."""
    return st.integers(0, 9).flatmap(lambda n: strategy if n < 9 else other)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(),
                        st.text(max_size=6), st.sampled_from([10**400, -(10**400), 1e308, -0.0]))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
coordinate = st.one_of(st.integers(-10, 40), st.floats(-20, 60), st.floats(0, 1e-5),
                       st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 10**400]),
                       st.sampled_from([2.5, 1e-7, 1e-300, 5e-324]),  # boxes thinner than float32 can hold
                       json_scalar)
number_text = st.one_of(st.integers(-10, 40).map(str), st.floats(-20, 60).map(repr), st.floats().map(repr),
                        st.integers().map(str),
                        st.sampled_from(["nan", "inf", "-inf", "1e400", "", "abc", " 5 ", "1_0", "0x10", "٣", "1e-300"]),
                        st.text(max_size=5))
file_name = st.sampled_from(["a.png", "b.jpg", "a.png", "b.jpg", "missing.png", "../a.png", "", "/nonexistent/x.png",
                             "sub/../a.png", ".", "a.png\x00"])


@st.composite
def mangled(draw, text: str) -> bytes:
    """The text (mostly), or it cut short / with random bytes in it, or random bytes alone."""
    data = text.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is"] * 12 + ["cut", "insert", "random"]))
    if how == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
    if how == "random":
        return draw(st.binary(max_size=120))
    return data


# ---------------------------------------------------------------- COCO

coco_size = mostly(st.sampled_from([20, 16, 10, 0, 20.0]), st.one_of(st.sampled_from([-5, 20.5, 10**400]), json_scalar))
any_image = st.fixed_dictionaries(
    {"id": mostly(st.integers(0, 4), json_value), "file_name": mostly(file_name, json_value)},
    optional={"width": coco_size, "height": coco_size})
true_image = st.tuples(st.integers(0, 4), st.sampled_from([("a.png", 20, 10), ("b.jpg", 16, 16), ("a.png", 0, 0)])).map(
    lambda t: {"id": t[0], "file_name": t[1][0], "width": t[1][1], "height": t[1][2]})
coco_image = mostly(true_image, any_image)
coco_annotation = st.fixed_dictionaries(
    {"image_id": mostly(st.integers(0, 4), json_value), "category_id": mostly(st.integers(0, 3), json_value),
     "bbox": mostly(st.lists(coordinate, min_size=4, max_size=4), st.one_of(st.lists(coordinate, max_size=6), json_value))},
    optional={"id": json_value, "iscrowd": json_value})
coco_category = st.sampled_from([{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cow"}])
coco_document = mostly(
    st.fixed_dictionaries({"images": st.lists(mostly(coco_image, json_value), max_size=4),
                           "annotations": st.lists(mostly(coco_annotation, json_value), max_size=6),
                           "categories": mostly(st.lists(coco_category, max_size=3, unique_by=lambda c: c["id"]),
                                                st.lists(mostly(coco_category, json_value), max_size=3))}),
    st.one_of(json_value, st.fixed_dictionaries({}, optional={"images": json_value, "annotations": json_value,
                                                              "categories": json_value})))


@FUZZ
@given(document=coco_document, data=st.data(), verify=st.booleans(), with_map=st.booleans())
def test_coco_reader_returns_valid_records_or_a_data_error(document, data, verify, with_map):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root)
        path = root / "ann.json"
        path.write_bytes(data.draw(mangled(json.dumps(document))))
        given_map = CategoryMap((1, 2), ("cat", "dog")) if with_map else None
        check_outcome(lambda: read_coco(path, category_map=given_map, verify_images=verify))


# ---------------------------------------------------------------- VOC

def tag(name, inner):
    """<name>inner</name>, mostly; sometimes left out."""
    return mostly(inner.map(lambda text: f"<{name}>{text}</{name}>"), st.just(""))


xml_text = st.one_of(number_text, st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)).map(escape)
voc_number = mostly(st.one_of(st.integers(-5, 40).map(str), st.floats(-10, 50).map(repr),
                              st.sampled_from(["1", "1.0000001", "1e-300"])), xml_text)
voc_box = st.tuples(*[tag(k, voc_number) for k in ("xmin", "ymin", "xmax", "ymax")]).map("".join)
voc_object = st.tuples(tag("name", mostly(st.sampled_from(["cat", "dog"]), xml_text)), tag("difficult", mostly(st.just("0"), st.one_of(st.just("inf"), xml_text))),
                       tag("bndbox", voc_box)).map(lambda parts: "<object>" + "".join(parts) + "</object>")
voc_size = mostly(st.sampled_from(["20", "16", "10", "0"]), st.one_of(st.sampled_from(["inf", "nan", "-3", "1e400"]), xml_text))
voc_document = st.tuples(
    tag("filename", mostly(file_name.filter(lambda n: "\x00" not in n), xml_text)),
    tag("size", st.tuples(tag("width", voc_size), tag("height", voc_size)).map("".join)),
    st.lists(voc_object, max_size=3).map("".join),
).map(lambda parts: "<annotation>" + "".join(parts) + "</annotation>")


@FUZZ
@given(documents=st.lists(voc_document, min_size=1, max_size=3), data=st.data(), verify=st.booleans(),
       split=mostly(st.none(), st.lists(st.sampled_from(["x0", "x1", "x2", "a", "../x0", "x0 1", "x1\x00", "  "]), max_size=4)))
def test_voc_reader_returns_valid_records_or_a_data_error(documents, data, verify, split):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "JPEGImages")
        (root / "Annotations").mkdir()
        for index, document in enumerate(documents):
            (root / "Annotations" / f"x{index}.xml").write_bytes(data.draw(mangled(document)))
        for index, name in enumerate(IMAGES):  # x0 shows a.png, x1 b.jpg by their ids
            (root / "JPEGImages" / f"x{index}{Path(name).suffix}").symlink_to(root / "JPEGImages" / name)
        if split is not None:
            (root / "ImageSets" / "Main").mkdir(parents=True)
            (root / "ImageSets" / "Main" / "train.txt").write_bytes(data.draw(mangled("\n".join(split))))
        check_outcome(lambda: read_voc(root, "train" if split is not None else None, verify_images=verify))


# ---------------------------------------------------------------- YOLO

yolo_line = st.one_of(
    st.tuples(st.integers(0, 1), *[st.floats(-0.5, 1.5)] * 4).map(lambda f: " ".join(map(str, f))),  # mostly valid
    st.tuples(st.integers(0, 1), *[st.one_of(st.floats(0, 1), st.sampled_from([1e-9, 1e-300]))] * 4).map(
        lambda f: " ".join(map(str, f))),
    st.tuples(st.one_of(st.integers(-2, 3).map(str), number_text), number_text, number_text, number_text, number_text).map(" ".join),
    st.lists(number_text, max_size=7).map(" ".join),  # wrong field counts
    st.text(max_size=12),
)
yolo_names = mostly(
    st.sampled_from([("classes.txt", "cat\ndog\n"), ("data.yaml", "names: [cat, dog]\n"), ("data.yaml", "names: {0: cat, 1: dog}")]),
    st.one_of(st.lists(st.text(max_size=5), max_size=3).map(lambda names: ("classes.txt", "\n".join(names))),
              json_value.map(lambda value: ("data.yaml", yaml.safe_dump({"names": value}))),
              st.dictionaries(json_scalar.filter(lambda k: k == k), st.text(max_size=3), max_size=3).map(
                  lambda value: ("data.yaml", yaml.safe_dump({"names": value}))),
              st.text(max_size=30).map(lambda text: ("data.yaml", text))),
)


@FUZZ
@given(labels=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.lists(yolo_line, max_size=4).map("\n".join), max_size=3),
       names=yolo_names, data=st.data(), with_map=st.booleans())
def test_yolo_reader_returns_valid_records_or_a_data_error(labels, names, data, with_map):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images" / "train")
        (root / "labels" / "train").mkdir(parents=True)
        for stem, text in labels.items():  # c.txt has no image
            (root / "labels" / "train" / f"{stem}.txt").write_bytes(data.draw(mangled(text)))
        (root / names[0]).write_bytes(data.draw(mangled(names[1])))
        check_outcome(lambda: read_yolo(root, "train", category_map=GIVEN_MAP if with_map else None))
