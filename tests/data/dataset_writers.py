"""Write one small dataset in COCO, VOC or YOLO layout from the same description, so a fault
can be checked in all three formats by one test.

    images = {"a.png": (64, 48), "b.jpg": (40, 40)}          # file name -> (width, height)
    boxes = {"a.png": [("cat", 4, 6, 24, 16)]}                # xyxy in pixels, as displayed
    data = write_dataset("voc", tmp_path, images, boxes)
    data.config          # a DatasetConfig for load_dataset / read_records
    data.image("a.png")  # the image file, to break
    data.annotation("a.png")  # the file a problem with that image is reported against
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_helpers import write_image

from detector.config import DatasetConfig

FORMATS = ("coco", "voc", "yolo")
CLASSES = ("cat", "dog")


@dataclass
class WrittenDataset:
    format: str
    root: Path
    config: DatasetConfig

    def image(self, name: str) -> Path:
        folder = {"coco": "images", "voc": "JPEGImages", "yolo": "images/train"}[self.format]
        return self.root / folder / name

    def annotation(self, name: str) -> Path:
        stem = Path(name).stem
        return {"coco": self.root / "ann.json", "voc": self.root / "Annotations" / f"{stem}.xml",
                "yolo": self.root / "labels" / "train" / f"{stem}.txt"}[self.format]


def write_dataset(fmt: str, root: Path, images: dict[str, tuple[int, int]],
                  boxes: dict[str, list[tuple]] | None = None, write_images: bool = True) -> WrittenDataset:
    boxes = boxes or {}
    data = WrittenDataset(fmt, root, _config(fmt, root))
    for name, (width, height) in images.items():
        if write_images:
            write_image(data.image(name), width, height)
    {"coco": _coco, "voc": _voc, "yolo": _yolo}[fmt](data, images, boxes)
    return data


def _config(fmt: str, root: Path) -> DatasetConfig:
    if fmt == "coco":
        return DatasetConfig(format="coco", annotations=str(root / "ann.json"), images=str(root / "images"))
    return DatasetConfig(format=fmt, root=str(root), split="train" if fmt == "yolo" else None)


def _coco(data: WrittenDataset, images: dict, boxes: dict) -> None:
    entries = [{"id": i, "file_name": name, "width": w, "height": h} for i, (name, (w, h)) in enumerate(images.items(), 1)]
    ids = {name: i for i, name in enumerate(images, 1)}
    annotations = [{"id": len(ids) * 100 + k, "image_id": ids[name], "category_id": CLASSES.index(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
                   for name, objects in boxes.items() for k, (c, x1, y1, x2, y2) in enumerate(objects)]
    categories = [{"id": i, "name": n} for i, n in enumerate(CLASSES, 1)]
    data.root.mkdir(parents=True, exist_ok=True)
    (data.root / "ann.json").write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))


def _voc(data: WrittenDataset, images: dict, boxes: dict) -> None:
    for name, (width, height) in images.items():
        objects = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"  # VOC corners are 1-based
            for c, x1, y1, x2, y2 in boxes.get(name, []))
        xml = data.annotation(name)
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(f"<annotation><filename>{name}</filename><size><width>{width}</width>"
                       f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>")


def _yolo(data: WrittenDataset, images: dict, boxes: dict) -> None:
    for name, (width, height) in images.items():
        lines = [f"{CLASSES.index(c)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                 f"{(x2 - x1) / width} {(y2 - y1) / height}" for c, x1, y1, x2, y2 in boxes.get(name, [])]
        label = data.annotation(name)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))
    (data.root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
