"""Load-time validation, the same fault in each format (COCO, VOC, YOLO): the report names the
annotation file and the record at fault, and data.policy=strict refuses, listing every problem.

Cases with one format only, or already covered per reader, live in test_<format>_reader.py."""
import re

import cv2
import numpy as np
import pytest
import torch
from dataset_writers import FORMATS, write_dataset
from PIL import Image

from detector.data import load_dataset, read_records
from detector.data.records import DROPPED_BOX, SKIPPED_ANNOTATION, SKIPPED_IMAGE
from detector.errors import DataError


def where_of(fmt, name):
    """How each reader names an image in its report."""
    return {"coco": f"image id 1 ({name})", "voc": f"image {name.split('.')[0]}", "yolo": name.split(".")[0]}[fmt]


def one_problem(report):
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


@pytest.mark.parametrize("fmt", ["coco", "voc"])  # YOLO finds its images by listing the folder
def test_missing_image_file_is_skipped_naming_the_annotation_and_the_image(tmp_path, fmt):
    data = write_dataset(fmt, tmp_path, {"a.png": (40, 30), "b.png": (40, 30)})
    data.image("a.png").unlink()
    records, _, report = read_records(data.config)
    assert len(records) == 1
    problem = one_problem(report)
    assert (problem.kind, problem.file, problem.where) == (SKIPPED_IMAGE, str(data.annotation("a.png")), where_of(fmt, "a.png"))
    assert problem.message == f"image file not found: {data.image('a.png')}"


def jpeg_bytes(width=64, height=48):
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8))
    return encoded.tobytes()


def png_bytes(width=64, height=48):
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8))
    return encoded.tobytes()


BROKEN_FILES = {
    "zero bytes": ("a.png", b"", "empty file (0 bytes)"),
    "not an image": ("a.png", b"this is text, not pixels", "cannot read the image header (not an image: no image decoder recognizes its content"),
    "truncated jpeg": ("a.jpg", jpeg_bytes()[:-600], "truncated: the JPEG data stops before its end-of-image marker"),
    "truncated png": ("a.png", png_bytes()[:-500], "truncated: the PNG stops before its IEND chunk"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_unreadable_empty_or_truncated_image_is_skipped_and_named(tmp_path, fmt, case):
    name, content, reason = BROKEN_FILES[case]
    data = write_dataset(fmt, tmp_path, {name: (64, 48), "b.png": (64, 48)}, {name: [("cat", 1, 1, 9, 9)]})
    data.image(name).write_bytes(content)
    records, _, report = read_records(data.config)
    assert [r.path.name for r in records] == ["b.png"]
    problem = one_problem(report)
    assert (problem.kind, problem.file, problem.where) == (SKIPPED_IMAGE, str(data.annotation(name)), where_of(fmt, name))
    assert problem.message.startswith(f"{data.image(name)}: {reason}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_complete_jpeg_and_png_with_data_after_the_end_are_not_called_truncated(tmp_path, fmt):
    """Some cameras append data after the JPEG's end marker; the marker walk finds the real end."""
    data = write_dataset(fmt, tmp_path, {"a.jpg": (64, 48), "b.png": (64, 48)})
    data.image("a.jpg").write_bytes(jpeg_bytes() + b"\x00TRAILER\xff\xda" + bytes(300))
    data.image("b.png").write_bytes(png_bytes() + b"trailing junk")
    records, _, report = read_records(data.config)
    assert len(records) == 2 and report.problems == []


def save_modes(folder):
    """Gray, RGBA, palette (PIL) and 16-bit (OpenCV) PNGs of 5x4, with their RGB pixel."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5), 100, np.uint8)).save(folder / "gray.png")
    Image.fromarray(np.full((4, 5, 4), [10, 20, 30, 0], np.uint8), "RGBA").save(folder / "rgba.png")
    palette = Image.new("P", (5, 4), 0)
    palette.putpalette([200, 40, 10] + [0] * 765)
    palette.save(folder / "palette.png")
    cv2.imwrite(str(folder / "deep.png"), np.full((4, 5, 3), 65535, np.uint16))
    return {"deep.png": [255, 255, 255], "gray.png": [100] * 3, "palette.png": [200, 40, 10], "rgba.png": [10, 20, 30]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_gray_rgba_palette_and_16_bit_images_load_as_rgb_uint8(tmp_path, fmt):
    sizes = {name: (5, 4) for name in ("deep.png", "gray.png", "palette.png", "rgba.png")}
    data = write_dataset(fmt, tmp_path, sizes, {name: [("dog", 1, 1, 4, 3)] for name in sizes}, write_images=False)
    expected = save_modes(data.image("x").parent)
    dataset = load_dataset(data.config, policy="strict")  # nothing lost
    assert sorted(r.path.name for r in dataset.records) == sorted(expected)
    for index, record in enumerate(dataset.records):
        image, target = dataset[index]
        assert image.shape == (3, 4, 5) and target["boxes"].tolist() == [[1, 1, 4, 3]]
        assert (image[:, 0, 0] * 255).round().tolist() == expected[record.path.name], record.path.name


@pytest.mark.parametrize("fmt", ["voc", "yolo"])  # COCO: test_detection_dataset.py
def test_exif_rotated_jpeg_keeps_its_boxes_on_the_object(tmp_path, fmt):
    """Annotated as displayed (120x60, red block at [10, 5, 40, 25]), stored rotated with EXIF
    orientation 6: YOLO normalizes by the displayed size, VOC compares with it."""
    data = write_dataset(fmt, tmp_path, {"photo.jpg": (120, 60)}, {"photo.jpg": [("cat", 10, 5, 40, 25)]},
                         write_images=False)
    shown = np.full((60, 120, 3), 40, np.uint8)
    shown[5:25, 10:40] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: store it rotated the other way
    data.image("photo.jpg").parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(cv2.rotate(shown, cv2.ROTATE_90_COUNTERCLOCKWISE))).save(
        data.image("photo.jpg"), exif=exif.tobytes(), quality=95)
    dataset = load_dataset(data.config, policy="strict")
    image, target = dataset[0]
    assert image.shape == (3, 60, 120)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 5, 40, 25]]), atol=1e-4, rtol=0)
    ys, xs = torch.nonzero((image[0] > 0.6) & (image[1] < 0.4), as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    torch.testing.assert_close(found, target["boxes"][0], atol=1.0, rtol=0)


BAD_BOXES = {
    "nan": ((float("nan"), 5, 20, 20), "has a NaN/inf coordinate"),
    "inf": ((5, 5, float("inf"), 20), "has a NaN/inf coordinate"),
    "negative width": ((30, 5, 10, 20), "has zero or negative width/height"),
    "negative height": ((5, 30, 20, 10), "has zero or negative width/height"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(BAD_BOXES))
def test_nan_inf_and_negative_boxes_are_dropped_naming_the_box(tmp_path, fmt, case):
    box, reason = BAD_BOXES[case]
    data = write_dataset(fmt, tmp_path, {"a.png": (64, 48)}, {"a.png": [("cat", 2, 2, 10, 10), ("dog", *box)]})
    records, _, report = read_records(data.config)
    assert records[0].labels.tolist() == [1]  # the good box stays
    problem = one_problem(report)
    assert (problem.kind, problem.file) == (DROPPED_BOX, str(data.annotation("a.png")))
    assert problem.where == {"coco": "annotation id 101 (image id 1)", "voc": "object 2 (dog)", "yolo": "line 2"}[fmt]
    assert reason in problem.message


def test_voc_split_list_naming_a_missing_annotation_or_an_image_twice(tmp_path):
    data = write_dataset("voc", tmp_path, {"a.png": (40, 30), "b.png": (40, 30)})
    listing = tmp_path / "ImageSets" / "Main" / "train.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("a\nb\nghost\na\n")
    records, _, report = read_records(data.config.__class__(format="voc", root=str(tmp_path), split="train"))
    assert [r.image_id for r in records] == ["a", "b"]  # a read once
    assert [str(p) for p in report.problems] == [
        f"{listing}: line 4: skipped image: duplicate image id 'a' (first on line 1); read once",
        f"{tmp_path / 'Annotations' / 'ghost.xml'}: image ghost: skipped image: annotation file not found",
    ]


def test_yolo_two_images_for_one_label_file_and_a_label_file_without_image(tmp_path):
    data = write_dataset("yolo", tmp_path, {"a.jpg": (40, 30), "a.png": (40, 30), "b.png": (40, 30)},
                         {"a.jpg": [("cat", 1, 1, 9, 9)], "b.png": [("dog", 1, 1, 9, 9)]})
    data.image("b.png").unlink()  # labels/train/b.txt has a box but no image
    (tmp_path / "labels" / "train" / "c.txt").write_text("")  # no image, no boxes: nothing lost
    records, _, report = read_records(data.config)
    assert [r.path.name for r in records] == ["a.jpg"]
    assert [str(p) for p in report.problems] == [
        f"{data.annotation('a.png')}: a: skipped image: duplicate image id 'a': a.png and a.jpg share this label file; "
        "a.png skipped",
        f"{data.annotation('b.png')}: whole file: skipped annotation: no image for these labels "
        "(looked for b.* with an image suffix)",
    ]
    assert report.count(SKIPPED_ANNOTATION) == 1


NOT_UTF8 = b"\xff\xfe\x00garbage \xc3\x28"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_text_file_that_is_not_utf8_is_an_error_naming_it(tmp_path, fmt):
    data = write_dataset(fmt, tmp_path, {"a.png": (40, 30)}, {"a.png": [("cat", 1, 1, 9, 9)]})
    bad = data.annotation("a.png") if fmt != "voc" else tmp_path / "ImageSets" / "Main" / "train.txt"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(NOT_UTF8)
    config = data.config.__class__(format="voc", root=str(tmp_path), split="train") if fmt == "voc" else data.config
    with pytest.raises(DataError, match=re.escape(f"{bad}: not UTF-8 text (byte 0: invalid start byte)")):
        read_records(config)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_policy_lists_every_problem_across_files_before_training(tmp_path, fmt):
    data = write_dataset(fmt, tmp_path, {"a.png": (64, 48), "b.png": (64, 48), "c.png": (64, 48)},
                         {"a.png": [("cat", 2, 2, 2, 9)], "b.png": [("dog", float("nan"), 1, 9, 9)],
                          "c.png": [("cat", 1, 1, 9, 9)]})
    data.image("c.png").write_bytes(b"")
    assert len(load_dataset(data.config, policy="skip")) == 2  # the default goes on, reporting
    with pytest.raises(DataError) as raised:
        load_dataset(data.config, policy="strict")
    message = str(raised.value)
    assert message.startswith(f"{data.config.annotations or data.config.root}") and "3 problems (data.policy=strict):" in message
    lines = message.splitlines()[1:]
    assert len(lines) == 3
    for name, kind, why in [("a.png", "dropped box", "zero or negative"), ("b.png", "dropped box", "NaN/inf"),
                            ("c.png", "skipped image", "empty file (0 bytes)")]:
        assert any(line.startswith(f"  {data.annotation(name)}: ") and f": {kind}: " in line and why in line
                   for line in lines), (name, lines)
