"""The original public data sets -> the COCO layout the recipes read.

Both conversions follow the same rules, so that the annotation files they write are
byte-identical to the ones whose SHA-256 the registry records (datasets.py):

- image ids 1..N over every image of the set sorted by file name; annotation ids 1..M in that
  image order (objects in the order of the source file), both splits counted together;
- images larger than 512 px on their longer side are downscaled to it (scale s = 512 / longer
  side, size round(w * s) x round(h * s)); smaller ones are kept as they are;
- bbox [x, y, w, h] = [xmin * s, ymin * s, (xmax - xmin) * s, (ymax - ymin) * s], each rounded to
  2 decimals, area = w * h of the rounded values, rounded to 2 decimals; iscrowd 0;
- `json.dumps` with its default separators, keys in the order images, annotations, categories, info.

Checked: the raccoon conversion of raccoon_dataset's data/train_labels.csv and test_labels.csv
(commit f4d1464) gives exactly the recorded files. The BCCD conversion follows the same rules
(checked on BloodImage_00171's XML); that it reproduces the recorded BCCD files exactly is only
checked by the checksum at install time.
"""
from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2

from detector.data.image_header import read_image_header
from detector.data.paths import contained_path
from detector.errors import DataError

MAX_SOURCE_PIXELS = 50_000_000  # the originals are phone and microscope photos; a bigger one is a bomb

MAX_SIDE = 512
DOWNSCALE_NOTE = "images resized so max side <= 512 (no upscaling), boxes scaled, segmentation dropped"


def scale_of(width: int, height: int) -> float:
    return min(1.0, MAX_SIDE / max(width, height))


def coco_box(xmin: float, ymin: float, xmax: float, ymax: float, scale: float) -> tuple[list[float], float]:
    box = [round(xmin * scale, 2), round(ymin * scale, 2), round((xmax - xmin) * scale, 2), round((ymax - ymin) * scale, 2)]
    return box, round(box[2] * box[3], 2)


def write_image(source: Path, target: Path, width: int, height: int) -> None:
    """Copy `source` to `target` at width x height: the same bytes when it already has that size,
    else resized (INTER_AREA) and saved as JPEG quality 95. The source's header is checked
    first (image_header.py): a decompression bomb in an archive is refused, not decoded."""
    read_image_header(source, str(source), MAX_SOURCE_PIXELS)
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{source}: not a readable image")
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.shape[:2] == (height, width):
        shutil.copyfile(source, target)
        return
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(target), resized, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise DataError(f"{target}: could not be written")


def write_coco(path: Path, images: list, annotations: list, categories: list, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories, "info": info}))


def convert_splits(splits: dict[str, list[dict]], objects: dict[str, list[tuple]], categories: list[dict],
                   info: dict, out: Path, image_folder: str, sources: dict[str, Path]) -> None:
    """The shared numbering and scaling. `splits`: output JSON name -> its images as
    {"name", "width", "height"}; `objects`: image name -> [(category id, xmin, ymin, xmax, ymax)];
    `sources`: image name -> its original file."""
    every = sorted(image["name"] for entries in splits.values() for image in entries)
    image_id = {name: index + 1 for index, name in enumerate(every)}
    annotation_id, next_id = {}, 1
    for name in every:
        annotation_id[name] = list(range(next_id, next_id + len(objects.get(name, []))))
        next_id += len(annotation_id[name])
    for json_name, entries in splits.items():
        images, annotations = [], []
        for entry in sorted(entries, key=lambda e: image_id[e["name"]]):
            name, scale = entry["name"], scale_of(entry["width"], entry["height"])
            width, height = round(entry["width"] * scale), round(entry["height"] * scale)
            images.append({"id": image_id[name], "file_name": f"{image_folder}/{name}", "width": width, "height": height})
            for ann_id, (category, *xyxy) in zip(annotation_id[name], objects.get(name, [])):
                bbox, area = coco_box(*xyxy, scale)
                annotations.append({"id": ann_id, "image_id": image_id[name], "category_id": category,
                                    "bbox": bbox, "area": area, "iscrowd": 0})
            target = contained_path(out / image_folder, name, f"{json_name}: image {name!r}")
            write_image(sources[name], target, width, height)
        write_coco(out / json_name, images, annotations, categories, info)


def convert_raccoon(source: Path, out: Path) -> None:
    """raccoon_dataset (Dat Tran): images/raccoon-N.jpg, data/train_labels.csv and
    data/test_labels.csv (filename,width,height,class,xmin,ymin,xmax,ymax) -> coco_train.json
    (160 images) and coco_val.json (40) over images/."""
    splits, objects = {}, {}
    for csv_name, json_name in (("train_labels.csv", "coco_train.json"), ("test_labels.csv", "coco_val.json")):
        path = source / "data" / csv_name
        if not path.is_file():
            raise DataError(f"{path}: not found; is {source} the raccoon_dataset archive?")
        sizes = {}
        with open(path, newline="", encoding="utf-8") as file:
            for line, row in enumerate(csv.DictReader(file), start=2):
                try:
                    sizes[row["filename"]] = (int(row["width"]), int(row["height"]))
                    box = [int(row[key]) for key in ("xmin", "ymin", "xmax", "ymax")]
                except (KeyError, TypeError, ValueError) as error:
                    raise DataError(f"{path}: line {line}: {error!r}") from None
                contained_path(source / "images", row["filename"], f"{path}: line {line}")  # before any file is touched
                objects.setdefault(row["filename"], []).append((1, *box))
        splits[json_name] = [{"name": name, "width": w, "height": h} for name, (w, h) in sizes.items()]
    names = {entry["name"] for entries in splits.values() for entry in entries}
    info = {"description": "raccoon (converted)",
            "note": f"split from data/train_labels.csv / data/test_labels.csv "
                    f"({len(splits['coco_train.json'])}/{len(splits['coco_val.json'])})",
            "note_downscale": DOWNSCALE_NOTE}
    categories = [{"id": 1, "name": "raccoon", "supercategory": "none"}]
    convert_splits(splits, objects, categories, info, out, "images", {n: source / "images" / n for n in names})
    shutil.copyfile(source / "LICENSE", out / "LICENSE")


BCCD_CATEGORIES = [{"id": 1, "name": "RBC", "supercategory": "none"}, {"id": 2, "name": "WBC", "supercategory": "none"},
                   {"id": 3, "name": "Platelets", "supercategory": "none"}]


def convert_bccd(source: Path, out: Path) -> None:
    """BCCD_Dataset (Shenggan): BCCD/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/
    trainval.txt, test.txt} (Pascal VOC) -> coco_trainval.json and coco_test.json over
    BCCD/JPEGImages/. Boxes with no width or height are left out."""
    root = source / "BCCD"
    category_id = {c["name"]: c["id"] for c in BCCD_CATEGORIES}
    splits, objects, sources = {}, {}, {}
    for split, json_name in (("trainval", "coco_trainval.json"), ("test", "coco_test.json")):
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: not found; is {source} the BCCD_Dataset archive?")
        entries = []
        for stem in listing.read_text(encoding="utf-8").split():
            where = f"{listing}: entry {stem!r}"
            xml = contained_path(root / "Annotations", f"{stem}.xml", where)
            contained_path(root / "JPEGImages", f"{stem}.jpg", where)
            try:
                tree = ET.parse(xml).getroot()
                size = tree.find("size")
                width, height = int(size.findtext("width")), int(size.findtext("height"))
                boxes = []
                for obj in tree.iter("object"):
                    box = obj.find("bndbox")
                    xyxy = [int(float(box.findtext(key))) for key in ("xmin", "ymin", "xmax", "ymax")]
                    if xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]:
                        boxes.append((category_id[obj.findtext("name").strip()], *xyxy))
            except (OSError, ET.ParseError, AttributeError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{xml}: cannot be converted: {error!r}") from None
            name = f"{stem}.jpg"
            entries.append({"name": name, "width": width, "height": height})
            objects[name], sources[name] = boxes, root / "JPEGImages" / name
        splits[json_name] = entries
    info = {"description": "bccd (converted)", "note": "split from BCCD/ImageSets/Main (trainval/test)",
            "note_downscale": DOWNSCALE_NOTE}
    convert_splits(splits, objects, BCCD_CATEGORIES, info, out, "BCCD/JPEGImages", sources)
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
