"""YOLO txt labels -> ImageRecords.

Layout: `root/images/<split>/*.jpg` (any image type, subfolders too) and the matching
`root/labels/<split>/*.txt` (same relative path, .txt), one line per object:
`class cx cy w h`, all but the class normalized to 0..1 by the image's width and height (as
displayed, EXIF orientation applied). A missing or empty label file is a negative image.
Class names, one per line or a YAML `names:` list/dict, come from the `names` file given,
else `root/classes.txt`, else `root/data.yaml`. A class's id is its 0-based YOLO index.

Reported, not fatal: a line whose class is outside 0..K-1 (the line is skipped), a label file
with no image, two images with one label file (a.jpg and a.png), and an image or label file
that resolves (symlink, '..') outside its folder (see paths.py). Fatal (`DataError` naming the
file and line): a line that is not `class cx cy w h`. Only `names:` is read from data.yaml;
its `path`/`train`/`val` are not (the folder layout above is), so they cannot point elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from detector.data.paths import escapes_root
from detector.data.records import (
    SKIPPED_ANNOTATION,
    SKIPPED_IMAGE,
    CategoryMap,
    DatasetReport,
    ImageRecord,
    check_image,
    make_record,
    read_text,
)
from detector.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_yolo(
    root: str | Path,
    split: str | None = None,
    names: str | Path | None = None,
    category_map: CategoryMap | None = None,
) -> tuple[list[ImageRecord], CategoryMap, DatasetReport]:
    """Read a YOLO dataset. Image sizes always come from the files (the labels are normalized)."""
    root = Path(root)
    image_dir = root / "images" / split if split else root / "images"
    label_dir = root / "labels" / split if split else root / "labels"
    if not image_dir.is_dir():
        raise DataError(f"YOLO folder {root}: no image folder {image_dir}")
    category_map = _category_map(root, names, category_map)
    report = DatasetReport(source=str(image_dir), format="yolo")

    records, image_of_id = [], {}
    for path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(image_dir).with_suffix("")
        label_file = label_dir / relative.with_suffix(".txt")
        if relative in image_of_id:  # a.jpg and a.png: one id, one label file
            report.add(SKIPPED_IMAGE, label_file, str(relative), f"duplicate image id {relative.as_posix()!r}: "
                       f"{path.name} and {image_of_id[relative].name} share this label file; {path.name} skipped")
            continue
        image_of_id[relative] = path
        escape = escapes_root(path.relative_to(image_dir), image_dir) or (
            escapes_root(label_file.relative_to(label_dir), label_dir))
        if escape:
            report.add(SKIPPED_IMAGE, label_file, str(relative), escape)
            continue
        objects = _read_labels(label_file, category_map.num_classes, report) if label_file.is_file() else []
        size = check_image(path, None, None, label_file, str(relative), report)
        if size is None:
            continue
        width, height = size
        boxes = [[(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                 for _, cx, cy, w, h, _ in objects]
        records.append(make_record(
            relative.as_posix(), path, width, height, boxes,
            labels=[o[0] + 1 for o in objects], iscrowd=[False] * len(objects),
            where=[f"line {o[5]}" for o in objects], file=label_file, report=report,
        ))
    _report_labels_without_images(label_dir, set(image_of_id), report)
    return records, category_map, report.finish(records, category_map)


def _report_labels_without_images(label_dir: Path, ids: set[Path], report: DatasetReport) -> None:
    """A label file with boxes but no image: its boxes are lost (an empty one loses nothing)."""
    if not label_dir.is_dir():
        return
    for label_file in sorted(label_dir.rglob("*.txt")):
        relative = label_file.relative_to(label_dir).with_suffix("")
        if relative in ids or label_file.name == "classes.txt":  # LabelImg writes classes.txt here
            continue
        if escapes_root(label_file.relative_to(label_dir), label_dir) or not read_text(label_file).strip():
            continue
        report.add(SKIPPED_ANNOTATION, label_file, "whole file",
                   f"no image for these labels (looked for {relative.as_posix()}.* with an image suffix)")


def _read_labels(label_file: Path, num_classes: int,
                 report: DatasetReport) -> list[tuple[int, float, float, float, float, int]]:
    objects = []
    for number, line in enumerate(read_text(label_file).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"{label_file}: line {number}: expected 'class cx cy w h' (5 values), got {line.strip()!r}")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"{label_file}: line {number}: expected an integer class and 4 numbers, "
                            f"got {line.strip()!r}") from None
        if not 0 <= cls < num_classes:  # like an unknown COCO category id: the line is skipped, reported
            report.add(SKIPPED_ANNOTATION, label_file, f"line {number}",
                       f"class {cls} is outside 0..{num_classes - 1} ({num_classes} names)")
            continue
        objects.append((cls, cx, cy, w, h, number))
    return objects


def _category_map(root: Path, names: str | Path | None, given: CategoryMap | None) -> CategoryMap:
    candidates = [Path(names)] if names is not None else [root / "classes.txt", root / "data.yaml"]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        if names is not None:
            raise DataError(f"YOLO class names file not found: {names}")
        if given is not None:
            return given
        raise DataError(f"YOLO folder {root}: no class names; write them one per line in {candidates[0]}, "
                        f"or a names: list in {candidates[1]}, or pass data.*.names")
    found = _read_names(source)
    if given is not None:
        if list(given.names[: len(found)]) != found or len(found) > len(given):
            raise DataError(f"{source}: class names {found} differ from the training set's {list(given.names)} "
                            f"(YOLO class indices must mean the same classes)")
        return given
    return CategoryMap(tuple(range(len(found))), tuple(found))


def _read_names(source: Path) -> list[str]:
    if source.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(read_text(source))
        except (yaml.YAMLError, ValueError, RecursionError) as error:  # ValueError: an int of > 4300 digits
            raise DataError(f"{source}: not valid YAML: {error}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):  # {0: person, 1: car}
            try:
                order = sorted((int(k), str(v)) for k, v in names.items())
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"{source}: names: keys must be class indices, got {list(names)}") from None
            if [k for k, _ in order] != list(range(len(order))):
                raise DataError(f"{source}: names: indices must be 0..{len(order) - 1}, got {[k for k, _ in order]}")
            return [v for _, v in order]
        if not isinstance(names, list) or not names:
            raise DataError(f"{source}: expected a 'names:' list (or index: name mapping) of class names")
        return [str(n) for n in names]
    found = [line.strip() for line in read_text(source).splitlines() if line.strip()]
    if not found:
        raise DataError(f"{source}: no class names (one per line expected)")
    return found
