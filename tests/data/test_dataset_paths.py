"""File names in annotation files may not leave the dataset folder ('..' or a symlink out of it):
skipped and reported, refused under data.policy=strict. Absolute names are accepted."""
import json
import re

import pytest
from data_helpers import write_image
from dataset_writers import write_dataset

from detector.data import load_dataset, read_records
from detector.data.paths import escapes_root
from detector.data.records import SKIPPED_IMAGE
from detector.errors import DataError


@pytest.fixture
def secret(tmp_path):
    """A readable image outside every dataset root."""
    return write_image(tmp_path / "outside" / "secret.png", 40, 30)


def test_escapes_root_resolves_dots_and_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link_out").symlink_to(tmp_path)
    assert escapes_root("sub/../a.png", root) is None
    assert escapes_root("/anywhere/a.png", root) is None  # absolute: the user's explicit choice
    assert escapes_root("../a.png", root) == f"'../a.png' escapes the dataset root {root} (it resolves to {tmp_path / 'a.png'}); skipped"
    assert "escapes the dataset root" in escapes_root("sub/../../a.png", root)
    assert "escapes the dataset root" in escapes_root("link_out/a.png", root)
    assert escapes_root("a\x00.png", root) is None  # not resolvable: left to the file check


def only_problem(report):
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


def test_coco_file_name_with_dots_or_a_symlink_out_is_skipped_absolute_is_used(tmp_path, secret):
    data = write_dataset("coco", tmp_path / "ds", {"a.png": (40, 30)})
    (tmp_path / "ds" / "images" / "link.png").symlink_to(secret)
    ann = json.loads(data.annotation("a.png").read_text())
    for i, name in enumerate(["../../outside/secret.png", "link.png", str(secret)], 2):
        ann["images"].append({"id": i, "file_name": name, "width": 40, "height": 30})
    data.annotation("a.png").write_text(json.dumps(ann))
    records, _, report = read_records(data.config)
    assert [r.image_id for r in records] == [1, 4]  # a.png, and the absolute path
    problems = [p for p in report.problems]
    assert [(p.kind, p.file, p.where) for p in problems] == [
        (SKIPPED_IMAGE, str(data.annotation("a.png")), "image id 2 (../../outside/secret.png)"),
        (SKIPPED_IMAGE, str(data.annotation("a.png")), "image id 3 (link.png)")]
    assert problems[0].message.startswith(f"'../../outside/secret.png' escapes the dataset root {tmp_path / 'ds' / 'images'}")
    assert problems[1].message.startswith("'link.png' escapes the dataset root") and str(secret) in problems[1].message
    with pytest.raises(DataError, match=r"2 problems \(data.policy=strict\)(.|\n)*link.png' escapes the dataset root"):
        load_dataset(data.config, policy="strict")


def test_coco_images_folder_that_is_itself_a_symlink_still_works(tmp_path):
    data = write_dataset("coco", tmp_path / "real", {"a.png": (40, 30)})
    (tmp_path / "linked").symlink_to(tmp_path / "real" / "images")
    records, _, report = read_records(data.config.__class__(format="coco", annotations=data.config.annotations,
                                                            images=str(tmp_path / "linked")))
    assert len(records) == 1 and report.problems == []


def test_voc_split_entry_and_filename_escaping_are_skipped_absolute_is_used(tmp_path, secret):
    data = write_dataset("voc", tmp_path / "ds", {"a.png": (40, 30), "b.png": (40, 30), "c.png": (40, 30)})
    (secret.parent / "evil.xml").write_text((tmp_path / "ds" / "Annotations" / "a.xml").read_text())
    b_xml, c_xml = data.annotation("b.png"), data.annotation("c.png")
    b_xml.write_text(b_xml.read_text().replace("<filename>b.png", "<filename>../../outside/secret.png"))
    c_xml.write_text(c_xml.read_text().replace("<filename>c.png", f"<filename>{secret}"))
    listing = tmp_path / "ds" / "ImageSets" / "Main" / "train.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("a\n../../outside/evil\nb\nc\n")
    records, _, report = read_records(data.config.__class__(format="voc", root=str(tmp_path / "ds"), split="train"))
    assert [r.image_id for r in records] == ["a", "c"] and records[1].path == secret
    assert [(p.kind, p.file, p.where) for p in report.problems] == [
        (SKIPPED_IMAGE, str(listing), "line 2"), (SKIPPED_IMAGE, str(b_xml), "image b")]
    assert report.problems[0].message.startswith(
        f"'../../outside/evil.xml' escapes the dataset root {tmp_path / 'ds' / 'Annotations'}")
    assert report.problems[1].message.startswith(
        f"'../../outside/secret.png' escapes the dataset root {tmp_path / 'ds' / 'JPEGImages'}")


def test_voc_symlinked_xml_out_of_the_folder_is_skipped(tmp_path, secret):
    data = write_dataset("voc", tmp_path / "ds", {"a.png": (40, 30), "b.png": (40, 30)})
    outside = secret.parent / "b.xml"
    data.annotation("b.png").rename(outside)
    data.annotation("b.png").symlink_to(outside)
    records, _, report = read_records(data.config)  # no split: every XML in Annotations/
    assert [r.image_id for r in records] == ["a"]
    problem = only_problem(report)
    assert (problem.file, problem.where) == (str(data.annotation("b.png")), "image b")
    assert problem.message.startswith("'b.xml' escapes the dataset root")


def test_voc_symlinked_image_out_of_the_folder_is_skipped(tmp_path, secret):
    data = write_dataset("voc", tmp_path / "ds", {"a.png": (40, 30)})
    data.image("a.png").unlink()
    data.image("a.png").symlink_to(secret)
    _, _, report = read_records(data.config)
    problem = only_problem(report)
    assert problem.where == "image a" and problem.message.startswith("'a.png' escapes the dataset root")


def test_yolo_symlinked_image_or_label_out_of_the_folder_is_skipped_and_not_read(tmp_path, secret):
    data = write_dataset("yolo", tmp_path / "ds", {"a.png": (40, 30), "b.png": (40, 30)})
    data.image("a.png").unlink()
    data.image("a.png").symlink_to(secret)
    private = tmp_path / "outside" / "private.txt"
    private.write_text("root:x:0:0 not a label line\n")  # parsing it would raise, quoting it
    data.annotation("b.png").unlink()
    data.annotation("b.png").symlink_to(private)
    records, _, report = read_records(data.config)
    assert records == []
    assert [(p.kind, p.where) for p in report.problems] == [(SKIPPED_IMAGE, "a"), (SKIPPED_IMAGE, "b")]
    assert report.problems[0].message.startswith("'a.png' escapes the dataset root")
    assert report.problems[1].message.startswith("'b.txt' escapes the dataset root")
    with pytest.raises(DataError, match=re.escape("2 problems (data.policy=strict)")):
        load_dataset(data.config, policy="strict")


def test_yolo_images_folder_that_is_a_symlink_still_works(tmp_path):
    write_dataset("yolo", tmp_path / "real", {"a.png": (40, 30)}, {"a.png": [("cat", 1, 1, 9, 9)]})
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "train").symlink_to(tmp_path / "real" / "images" / "train")
    (tmp_path / "ds" / "labels").symlink_to(tmp_path / "real" / "labels")
    (tmp_path / "ds" / "classes.txt").write_text("cat\ndog\n")
    records, _, report = read_records(write_dataset("yolo", tmp_path / "ds", {}).config)
    assert len(records) == 1 and len(records[0].boxes) == 1 and report.problems == []
