"""COCO instances JSON -> ImageRecords.

bbox [x, y, w, h] becomes xyxy [x, y, x + w, y + h]. Crowd annotations stay in the record with
iscrowd=True (left out of the training target; COCO evaluation ignores detections on them).
Images without annotations are kept as negatives. Categories map to labels 1..K in id order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector.data.records import (
    SKIPPED_ANNOTATION,
    SKIPPED_IMAGE,
    CategoryMap,
    DataError,
    DatasetReport,
    ImageRecord,
    check_image,
    make_record,
)


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
    used_ids = {a.get("category_id") for a in annotations_list if isinstance(a, dict)}
    category_map, label_of_id = _map_categories(categories, category_map, used_ids, path, report)

    entries: dict[Any, dict] = {}  # image id -> image entry (first of duplicates)
    for index, image in enumerate(_list(data, "images", path)):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: images[{index}] needs 'id' and 'file_name', got {image!r}")
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
        if ann.get("image_id") not in entries:
            report.add(SKIPPED_ANNOTATION, path, where, f"image id {ann.get('image_id')!r} is not in 'images'")
            continue
        if ann.get("category_id") not in label_of_id:
            report.add(SKIPPED_ANNOTATION, path, where,
                       f"category id {ann.get('category_id')!r} is not in 'categories'")
            continue
        box = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            report.add(SKIPPED_ANNOTATION, path, where, f"bbox must be 4 numbers [x, y, w, h], got {box!r}")
            continue
        label = label_of_id[ann["category_id"]]
        objects[ann["image_id"]].append(([x, y, x + w, y + h], label, bool(ann.get("iscrowd", 0)), where))

    records = []
    for image_id, image in entries.items():
        file = image_root / str(image["file_name"])
        size = check_image(file, image.get("width"), image.get("height"), path,
                           f"image id {image_id} ({image['file_name']})", report, verify_images)
        if size is None:
            continue
        boxes, labels, crowd, where = zip(*objects[image_id]) if objects[image_id] else ((), (), (), ())
        records.append(make_record(image_id, file, *size, list(boxes), list(labels), list(crowd),
                                   [f"{w} (image id {image_id})" for w in where], path, report))
    return records, category_map, report.finish(records, category_map)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotations file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: line {error.lineno} column {error.colno}: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories, got {type(data).__name__}")
    return data


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
        try:
            categories.append((int(category["id"]), str(category["name"])))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: categories[{index}] needs an integer 'id' and a 'name', got {category!r}") from None
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
