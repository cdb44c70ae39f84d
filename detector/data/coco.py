"""COCO instances JSON -> ImageRecords.

bbox [x, y, w, h] becomes xyxy [x, y, x + w, y + h]. Crowd annotations stay in the record with
iscrowd=True (left out of the training target; COCO evaluation ignores detections on them).
Images without annotations are kept as negatives. Categories map to labels 1..K in id order.

`file_name` is relative to the images folder and may not leave it ('..' or a symlink out of
it: the image is skipped and reported, see paths.py); an absolute `file_name` is the user's
explicit choice and is used as it is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def read_coco(
    annotations: str | Path,
    images: str | Path | None = None,
    category_map: CategoryMap | None = None,
    *,
    verify_images: bool = True,
) -> tuple[list[ImageRecord], CategoryMap, DatasetReport]:
    """Read a COCO instances JSON. `images` is the folder `file_name` is relative to (default:
    the JSON's folder). With `category_map` (the training set's), its labels are used and a
    category it does not know is an error. `verify_images` reads each image header to check
    the file and its size (missing/unreadable/mis-sized images are reported and skipped)."""
    path = Path(annotations)
    data = _read_json(path)
    image_root = Path(images) if images is not None else path.parent
    report = DatasetReport(source=str(path), format="coco")

    categories = _categories(data, path)
    annotations_list = _list(data, "annotations", path, required=False)
    used_ids = {a.get("category_id") for a in annotations_list if isinstance(a, dict) and _is_key(a.get("category_id"))}
    category_map, label_of_id = _map_categories(categories, category_map, used_ids, path, report)

    entries: dict[Any, dict] = {}  # image id -> image entry (first of duplicates)
    for index, image in enumerate(_list(data, "images", path)):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: images[{index}] needs 'id' and 'file_name', got {image!r}")
        if not _is_key(image["id"]) or not isinstance(image["file_name"], str) or not image["file_name"]:
            raise DataError(f"{path}: images[{index}] needs an integer or string 'id' and a 'file_name' string, "
                            f"got {image!r}")
        if image["id"] in entries:
            report.add(SKIPPED_IMAGE, path, f"image id {image['id']}",
                       f"duplicate image id (images[{index}], {image['file_name']}); the first one is kept")
            continue
        entries[image["id"]] = image

    objects: dict[Any, list[tuple[list, int, bool, str]]] = {image_id: [] for image_id in entries}
    for index, ann in enumerate(annotations_list):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{index}] is not an object: {ann!r}")
        where = f"annotation id {ann.get('id', f'[{index}]')}"
        if not _is_key(ann.get("image_id")) or ann.get("image_id") not in entries:
            report.add(SKIPPED_ANNOTATION, path, where, f"image id {ann.get('image_id')!r} is not in 'images'")
            continue
        if not _is_key(ann.get("category_id")) or ann.get("category_id") not in label_of_id:
            report.add(SKIPPED_ANNOTATION, path, where,
                       f"category id {ann.get('category_id')!r} is not in 'categories'")
            continue
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            report.add(SKIPPED_ANNOTATION, path, where, f"bbox must be 4 numbers [x, y, w, h], got {box!r}")
            continue
        x, y, w, h = (_to_float(v) for v in box)
        label = label_of_id[ann["category_id"]]
        objects[ann["image_id"]].append(([x, y, x + w, y + h], label, bool(ann.get("iscrowd", 0)), where))

    records = []
    for image_id, image in entries.items():
        file = image_root / image["file_name"]
        named = f"image id {image_id} ({image['file_name']})"
        escape = escapes_root(image["file_name"], image_root)
        if escape:
            report.add(SKIPPED_IMAGE, path, named, escape)
            continue
        size = check_image(file, image.get("width"), image.get("height"), path, named, report, verify_images)
        if size is None:
            continue
        boxes, labels, crowd, where = zip(*objects[image_id]) if objects[image_id] else ((), (), (), ())
        records.append(make_record(image_id, file, *size, list(boxes), list(labels), list(crowd),
                                   [f"{w} (image id {image_id})" for w in where], path, report))
    return records, category_map, report.finish(records, category_map)


def _is_key(value: Any) -> bool:
    """An image or category id as COCO writes them: an integer (or a string), never a list or bool."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range: an infinite coordinate, dropped and reported
        return math.inf if value > 0 else -math.inf


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotations file not found: {path}")
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: line {error.lineno} column {error.colno}: {error.msg}") from None
    except (ValueError, RecursionError) as error:  # an integer of > 4300 digits, nesting too deep
        raise DataError(f"{path}: not usable JSON: {str(error) or type(error).__name__}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories, got {type(data).__name__}")
    return data


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(data: dict, key: str, path: Path, required: bool = True) -> list:
    if key not in data:
        if required:
            raise DataError(f"{path}: no '{key}' list (not a COCO instances file?)")
        return []
    if not isinstance(data[key], list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data[key]


def _categories(data: dict, path: Path) -> list[tuple[int, str]]:
    categories = []
    for index, category in enumerate(_list(data, "categories", path)):
        if not isinstance(category, dict) or "name" not in category or not _is_integer(category.get("id")):
            raise DataError(f"{path}: categories[{index}] needs an integer 'id' and a 'name', got {category!r}")
        categories.append((category["id"], str(category["name"])))
    ids = [c[0] for c in categories]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DataError(f"{path}: category ids {repeated} appear more than once in 'categories'")
    return sorted(categories)


def _map_categories(
    categories: list[tuple[int, str]], given: CategoryMap | None, used_ids: set, path: Path, report: DatasetReport
) -> tuple[CategoryMap, dict[int, int]]:
    """The category map (given, or built from this file in id order) and category id -> label."""
    if given is None:
        category_map = CategoryMap(tuple(c[0] for c in categories), tuple(c[1] for c in categories))
        return category_map, {cid: label for label, cid in enumerate(category_map.ids, 1)}
    label_of_id, unknown = {}, []
    for cid, name in categories:
        if cid in given.ids:
            if given.name_of(given.label_of(cid)) != name:
                raise DataError(
                    f"{path}: category id {cid} is {name!r} here but {given.name_of(given.label_of(cid))!r} "
                    f"in the training set's category map; the ids must mean the same classes"
                )
            label_of_id[cid] = given.label_of(cid)
        elif cid in used_ids:
            unknown.append(f"{cid} ({name!r})")
        else:
            report.notes.append(f"category {cid} ({name!r}) is not in the training set and has no boxes here")
    if unknown:
        raise DataError(
            f"{path}: categories {', '.join(unknown)} are not in the training set's category map "
            f"{given.to_dict()}"
        )
    return given, label_of_id
