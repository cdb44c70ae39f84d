"""Pascal VOC -> ImageRecords.

Layout: `root/Annotations/<id>.xml`, `root/JPEGImages/<filename>`, and optionally
`root/ImageSets/Main/<split>.txt` listing the ids of a split (without it: every XML).

- Classes: the names found in the XMLs, sorted (for the full VOC set this is the standard
  20-class order, which is alphabetical). A validation split reuses the training set's map.
  VOC has no category ids: a class's id is its 1-based position in that list.
- `difficult` objects are kept with iscrowd=True: out of the training target, and neutral in
  evaluation (COCO-style ignore), as VOC's own evaluation treats them.
- VOC coordinates are 1-based pixel indices with inclusive corners; like detectron2 we
  convert to 0-based xyxy as (xmin - 1, ymin - 1, xmax, ymax).
- Paths: a split entry names `Annotations/<id>.xml`, an XML's `<filename>` names a file in
  `JPEGImages/`; neither may leave its folder ('..' or a symlink out of it: skipped and
  reported, see paths.py). An absolute `<filename>` is the user's explicit choice, used as is.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detector.data.paths import escapes_root
from detector.data.records import (
    SKIPPED_IMAGE,
    CategoryMap,
    DatasetReport,
    ImageRecord,
    check_image,
    make_record,
    read_text,
)
from detector.errors import DataError


def read_voc(
    root: str | Path,
    split: str | None = None,
    category_map: CategoryMap | None = None,
    *,
    verify_images: bool = True,
) -> tuple[list[ImageRecord], CategoryMap, DatasetReport]:
    root = Path(root)
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError(f"VOC folder {root}: no Annotations/ folder")
    report = DatasetReport(source=f"{root}" + (f" (split {split})" if split else ""), format="voc")

    parsed = []  # (id, xml path, parsed annotation)
    for image_id in _split_ids(root, split, report):
        xml = annotations / f"{image_id}.xml"
        escape = escapes_root(f"{image_id}.xml", annotations)  # a symlinked XML
        if escape:
            report.add(SKIPPED_IMAGE, xml, f"image {image_id}", escape)
            continue
        if not xml.is_file():
            report.add(SKIPPED_IMAGE, xml, f"image {image_id}", "annotation file not found")
            continue
        parsed.append((image_id, xml, _parse_xml(xml)))

    found = sorted({obj[0] for _, _, ann in parsed for obj in ann["objects"]})
    if category_map is None:
        category_map = CategoryMap(tuple(range(1, len(found) + 1)), tuple(found))
    unknown = [name for name in found if name not in category_map.names]
    if unknown:
        example = {name: next(x for _, x, a in parsed if any(o[0] == name for o in a["objects"])) for name in unknown}
        listing = ", ".join(f"{name!r} (e.g. {file})" for name, file in example.items())
        raise DataError(
            f"VOC {root}: classes {listing} are not in the training set's classes {list(category_map.names)}")

    records = []
    images = root / "JPEGImages"
    for image_id, xml, ann in parsed:
        name = ann["filename"]
        if not (images / name).is_file() and (images / f"{image_id}.jpg").is_file():
            name = f"{image_id}.jpg"
        path = images / name
        escape = escapes_root(name, images)
        if escape:
            report.add(SKIPPED_IMAGE, xml, f"image {image_id}", escape)
            continue
        size = check_image(path, ann["width"], ann["height"], xml, f"image {image_id}", report, verify_images)
        if size is None:
            continue
        objects = ann["objects"]
        records.append(make_record(
            image_id, path, *size,
            boxes=[o[2] for o in objects],
            labels=[category_map.label_of_name(o[0]) for o in objects],
            iscrowd=[o[1] for o in objects],
            where=[f"object {i} ({o[0]})" for i, o in enumerate(objects, 1)],
            file=xml, report=report,
        ))
    return records, category_map, report.finish(records, category_map)


def _split_ids(root: Path, split: str | None, report: DatasetReport) -> list[str]:
    """The ids of a split (every XML without one); an id leading out of Annotations/ is
    reported and skipped, a repeated one is reported and read once."""
    if split is None:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"VOC split file not found: {listing}")
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_text(listing).splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        escape = escapes_root(f"{image_id}.xml", root / "Annotations")
        if escape:
            report.add(SKIPPED_IMAGE, listing, f"line {number}", escape)
            continue
        if image_id in first_line:
            report.add(SKIPPED_IMAGE, listing, f"line {number}",
                       f"duplicate image id {image_id!r} (first on line {first_line[image_id]}); read once")
            continue
        first_line[image_id] = number
    return list(first_line)


def _parse_xml(xml: Path) -> dict:
    try:
        tree = ET.parse(xml)
    except ET.ParseError as error:
        line, column = error.position
        raise DataError(f"{xml}: not valid XML: line {line} column {column}: {error}") from None
    except OSError as error:
        raise DataError(f"{xml}: cannot be read ({error.strerror or error})") from None
    node = tree.getroot()
    width = _number(node, "size/width", xml, "size", int, required=False)
    height = _number(node, "size/height", xml, "size", int, required=False)
    objects = []
    for index, obj in enumerate(node.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml}: object {index} has no <name>")
        where = f"object {index} ({name})"
        if obj.find("bndbox") is None:
            raise DataError(f"{xml}: {where} has no <bndbox>")
        box = [_number(obj, f"bndbox/{key}", xml, where, float) for key in ("xmin", "ymin", "xmax", "ymax")]
        box[0] -= 1.0  # 1-based inclusive pixel corners -> 0-based xyxy (detectron2's convention)
        box[1] -= 1.0
        difficult = bool(_number(obj, "difficult", xml, where, int, required=False))
        objects.append((name, difficult, box))
    filename = (node.findtext("filename") or "").strip() or f"{xml.stem}.jpg"
    return {"filename": filename, "width": width, "height": height, "objects": objects}


def _number(node: ET.Element, key: str, xml: Path, where: str, kind: type, required: bool = True):
    text = node.findtext(key)
    if text is None or not text.strip():
        if required:
            raise DataError(f"{xml}: {where} has no <{key}>")
        return None
    try:
        return kind(float(text)) if kind is int else kind(text)
    except (ValueError, OverflowError):  # int(float("inf")) overflows
        raise DataError(f"{xml}: {where}: <{key}> is {text.strip()!r}, not a number") from None
