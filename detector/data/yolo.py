"""YOLO txt labels -> ImageRecords.

Layout: `root/images/<split>/*.jpg` (any image type, subfolders too) and the matching
`root/labels/<split>/*.txt` (same relative path, .txt), one line per object:
`class cx cy w h`, all but the class normalized to 0..1 by the image's width and height (as
displayed, EXIF orientation applied). A missing or empty label file is a negative image.
Class names, one per line or a YAML `names:` list/dict, come from the `names` file given,
else `root/classes.txt`, else `root/data.yaml`. A class's id is its 0-based YOLO index.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from detector.data.records import (
    CategoryMap,
    DataError,
    DatasetReport,
    ImageRecord,
    check_image,
    make_record,
)

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

    records = []
    for path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(image_dir).with_suffix("")
        label_file = label_dir / relative.with_suffix(".txt")
        objects = _read_labels(label_file, category_map.num_classes) if label_file.is_file() else []
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
    return records, category_map, report.finish(records, category_map)


def _read_labels(label_file: Path, num_classes: int) -> list[tuple[int, float, float, float, float, int]]:
    objects = []
    for number, line in enumerate(label_file.read_text().splitlines(), 1):
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
        if not 0 <= cls < num_classes:
            raise DataError(
                f"{label_file}: line {number}: class {cls} is outside 0..{num_classes - 1} ({num_classes} names)")
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
            data = yaml.safe_load(source.read_text())
        except yaml.YAMLError as error:
            raise DataError(f"{source}: not valid YAML: {error}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):  # {0: person, 1: car}
            try:
                order = sorted((int(k), str(v)) for k, v in names.items())
            except ValueError:
                raise DataError(f"{source}: names: keys must be class indices, got {list(names)}") from None
            if [k for k, _ in order] != list(range(len(order))):
                raise DataError(f"{source}: names: indices must be 0..{len(order) - 1}, got {[k for k, _ in order]}")
            return [v for _, v in order]
        if not isinstance(names, list) or not names:
            raise DataError(f"{source}: expected a 'names:' list (or index: name mapping) of class names")
        return [str(n) for n in names]
    found = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    if not found:
        raise DataError(f"{source}: no class names (one per line expected)")
    return found
