"""The one record type every reader produces, the category mapping, and the load-time report.

Readers (coco.py, voc.py, yolo.py) turn a dataset's own files into `ImageRecord`s with boxes
in xyxy pixels and labels in 1..K (0 is background), plus a `CategoryMap` that remembers the
dataset's original category ids and names, plus a `DatasetReport` that says what was read and
what was fixed, dropped or skipped, naming the file and the record at fault.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import DataError, ImageFileError, ImageTooLargeError


@dataclass
class ImageRecord:
    """One image and its boxes, independent of the dataset's format.

    `image_id` is the dataset's own id (int for COCO, the file stem for VOC/YOLO). Boxes are
    float32 [N, 4] xyxy in pixels of the image as displayed (EXIF orientation applied), labels
    int64 [N] in 1..K, `iscrowd` bool [N]: crowd (COCO) and difficult (VOC) boxes stay in the
    record for evaluation but are left out of the training target.
    """

    image_id: int | str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, bool).reshape(-1)
        if not len(self.boxes) == len(self.labels) == len(self.iscrowd):
            raise DataError(
                f"{self.path}: {len(self.boxes)} boxes, {len(self.labels)} labels, "
                f"{len(self.iscrowd)} iscrowd flags; they must be the same length"
            )


@dataclass(frozen=True)
class CategoryMap:
    """A dataset's category ids and names, mapped once to the contiguous labels 1..K.

    Label `i + 1` is `ids[i]` / `names[i]`. Ids are the dataset's own: COCO category ids,
    YOLO class indices (0-based), VOC positions in the class list (1-based; VOC has no ids).
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.ids) != len(self.names):
            raise DataError(f"category map: {len(self.ids)} ids but {len(self.names)} names")
        repeated = [i for i, n in Counter(self.ids).items() if n > 1]
        if repeated:
            raise DataError(f"category map: category ids {repeated} appear more than once")

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background excluded)."""
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def label_of(self, category_id: int) -> int:
        try:
            return self.ids.index(int(category_id)) + 1
        except ValueError:
            raise DataError(f"category id {category_id} is not one of {list(self.ids)}") from None

    def label_of_name(self, name: str) -> int:
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise DataError(f"class name {name!r} is not one of {list(self.names)}") from None

    def id_of(self, label: int) -> int:
        return self.ids[self._index(label)]

    def name_of(self, label: int) -> str:
        return self.names[self._index(label)]

    def _index(self, label: int) -> int:
        if not 1 <= int(label) <= len(self.ids):
            raise DataError(f"label {label} is outside 1..{len(self.ids)} (0 is background)")
        return int(label) - 1

    def to_dict(self) -> dict[str, list]:
        """Plain lists, for checkpoints and JSON."""
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CategoryMap:
        if not isinstance(data, dict) or "ids" not in data or "names" not in data:
            raise DataError(f"category map: expected {{'ids': [...], 'names': [...]}}, got {data!r}")
        return cls(tuple(data["ids"]), tuple(data["names"]))


# ---------------------------------------------------------------- report

# Problem kinds. Only "clipped" is a fix; the others lose data ("strict" policy refuses them).
CLIPPED = "clipped"  # box partly outside the image, clipped to it
DROPPED_BOX = "dropped box"  # zero/negative size, NaN/inf, or wholly outside the image
SKIPPED_ANNOTATION = "skipped annotation"  # points to a missing image / unknown category
SKIPPED_IMAGE = "skipped image"  # file missing or unreadable, duplicate id, size mismatch


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str  # the file at fault: annotation JSON/XML/txt or image
    where: str  # the record inside it: "annotation id 7", "line 3", "object 2 (dog)"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.kind}: {self.message}"


@dataclass
class DatasetReport:
    """What a reader read, and every box or image it fixed, dropped or skipped."""

    source: str  # the annotation file or dataset folder
    format: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    num_images: int = 0
    num_boxes: int = 0  # training boxes (crowd/difficult not counted)
    num_crowd: int = 0
    num_empty: int = 0  # images without a training box, kept as negatives
    per_class: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, file: str | Path, where: str, message: str) -> None:
        self.problems.append(Problem(kind, str(file), where, message))

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)

    @property
    def skipped_images(self) -> list[Problem]:
        """The images left out (missing, unreadable, ...), each a Problem naming the file."""
        return [p for p in self.problems if p.kind == SKIPPED_IMAGE]

    @property
    def data_lost(self) -> list[Problem]:
        """Problems that lost a box, an annotation or an image (everything but clipping)."""
        return [p for p in self.problems if p.kind != CLIPPED]

    def finish(self, records: list[ImageRecord], category_map: CategoryMap) -> DatasetReport:
        """Fill the counts from the final records."""
        self.num_images = len(records)
        per_label: Counter[int] = Counter()
        self.num_boxes = self.num_crowd = self.num_empty = 0
        for record in records:
            train = ~record.iscrowd
            per_label.update(record.labels[train].tolist())
            self.num_boxes += int(train.sum())
            self.num_crowd += int(record.iscrowd.sum())
            self.num_empty += int(not train.any())
        self.per_class = {name: per_label[label] for label, name in enumerate(category_map.names, 1)}
        return self

    def summary(self, max_problems: int = 10) -> str:
        """The load-time printout: counts, per-class boxes, fixes, and the first problems."""
        crowd = f" (+{self.num_crowd} crowd/difficult, ignored in training)" if self.num_crowd else ""
        lines = [
            f"{self.format} {self.source}: {self.num_images} images, {self.num_boxes} boxes{crowd}, "
            f"{len(self.per_class)} classes, {self.num_empty} images without boxes (kept as negatives)"
        ]
        width = max((len(n) for n in self.per_class), default=0)
        lines += [f"  {name:<{width}}  {n}" for name, n in self.per_class.items()]
        lines.append(
            f"  fixed: {self.count(CLIPPED)} boxes clipped to the image; dropped: "
            f"{self.count(DROPPED_BOX)} boxes (zero/negative size, NaN, outside), "
            f"{self.count(SKIPPED_ANNOTATION)} annotations, {self.count(SKIPPED_IMAGE)} images"
        )
        lines += [f"  note: {note}" for note in self.notes]
        if self.problems:
            shown = sorted(self.problems, key=lambda p: p.kind == CLIPPED)[:max_problems]  # losses first
            more = f" (first {len(shown)} of {len(self.problems)})" if len(shown) < len(self.problems) else ""
            lines.append(f"  problems{more}:")
            lines += [f"    {p}" for p in shown]
        return "\n".join(lines)


# ---------------------------------------------------------------- shared helpers for readers


def clean_boxes(
    boxes: np.ndarray, width: int, height: int, file: str | Path, where: list[str], report: DatasetReport
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; return (boxes, mask of the boxes kept); every box clipped or
    dropped is reported with `file` and its `where` (one name per box)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), bool)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box
        shown = f"[{', '.join(f'{v:g}' for v in box)}]"
        if not all(math.isfinite(v) for v in box):
            report.add(DROPPED_BOX, file, where[i], f"box {shown} has a NaN/inf coordinate")
            keep[i] = False
            continue
        clipped = np.array([min(max(x1, 0), width), min(max(y1, 0), height),
                            min(max(x2, 0), width), min(max(y2, 0), height)])
        stored = clipped.astype(np.float32)  # records hold float32: a box thinner than its precision is empty
        if x2 <= x1 or y2 <= y1:
            report.add(DROPPED_BOX, file, where[i], f"box {shown} has zero or negative width/height")
            keep[i] = False
        elif clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            report.add(DROPPED_BOX, file, where[i], f"box {shown} lies outside the {width}x{height} image")
            keep[i] = False
        elif stored[2] <= stored[0] or stored[3] <= stored[1]:
            report.add(DROPPED_BOX, file, where[i], f"box {shown} is too thin to store (zero width/height in float32)")
            keep[i] = False
        else:
            if not np.array_equal(clipped, box):
                report.add(CLIPPED, file, where[i], f"box {shown} clipped to the {width}x{height} image")
            boxes[i] = stored
    return boxes, keep


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as displayed (EXIF orientation applied, as
    `cv2.imread` does), read from the header without decoding the pixels. An empty file, an
    unreadable header, a truncated JPEG/PNG (truncated.py) or one above the pixel limit
    (a decompression bomb: image_header.py) raises a `DataError` naming it."""
    from PIL import Image  # a dependency of torchvision

    from detector.data.image_header import read_image_header

    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        header = read_image_header(path, str(path), allow_unchecked_formats=False)
        with Image.open(path) as image:  # within the pixel limit: PIL decodes a PNG to find its EXIF
            orientation = image.getexif().get(0x0112, 1)
    except ImageFileError as error:  # named as before: "truncated: ...", "N pixels, more than the limit"
        if isinstance(error, ImageTooLargeError) or error.reason.startswith("truncated"):
            raise
        raise DataError(f"{path}: cannot read the image header ({error.reason})") from None
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        raise DataError(f"{path}: cannot read the image header ({error})") from None
    width, height = header.width, header.height
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    return int(width), int(height)


def _pixel_count(value: Any) -> int | None:
    """A positive whole number of pixels (640 or 640.0), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():  # also NaN and inf
        return None
    return int(value) if value > 0 else None


def check_image(path: Path, width: Any, height: Any, file: str | Path, where: str,
                report: DatasetReport, verify: bool = True) -> tuple[int, int] | None:
    """The image's (width, height), or None (reported) when it is missing, unreadable or of
    another size than its annotation says. A size of None or 0 means "not annotated" (read
    from the file); any other value must be a positive whole number. `verify=False` trusts
    the annotated size."""
    annotated = None
    if width not in (None, 0) and height not in (None, 0):
        annotated = (_pixel_count(width), _pixel_count(height))
        if None in annotated:
            report.add(SKIPPED_IMAGE, file, where,
                       f"width and height must be positive whole numbers, got width {width!r}, height {height!r}")
            return None
    if not path.is_file():
        report.add(SKIPPED_IMAGE, file, where, f"image file not found: {path}")
        return None
    if not verify and annotated:
        return annotated
    try:
        actual = image_size(path)
    except DataError as error:
        report.add(SKIPPED_IMAGE, file, where, str(error))
        return None
    if annotated and annotated != actual:
        hint = " (EXIF orientation rotates it)" if annotated[::-1] == actual else ""
        report.add(SKIPPED_IMAGE, file, where,
                   f"{path} is {actual[0]}x{actual[1]}{hint} but the annotation says {width}x{height}")
        return None
    return actual


def read_text(path: Path) -> str:
    """A text file's content; a file that is unreadable or not UTF-8 is a `DataError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def make_record(image_id: int | str, path: Path, width: int, height: int, boxes: list, labels: list,
                iscrowd: list, where: list[str], file: str | Path, report: DatasetReport) -> ImageRecord:
    """An `ImageRecord` with its boxes cleaned (clipped / dropped, each reported)."""
    cleaned, keep = clean_boxes(np.asarray(boxes, np.float64), width, height, file, where, report)
    return ImageRecord(
        image_id=image_id, path=path, width=width, height=height,
        boxes=cleaned[keep].astype(np.float32),
        labels=np.asarray(labels, np.int64).reshape(-1)[keep],
        iscrowd=np.asarray(iscrowd, bool).reshape(-1)[keep],
    )


def raise_if_strict(report: DatasetReport, policy: str) -> None:
    """policy "strict": refuse a dataset that lost any box, annotation or image, listing them all."""
    if policy not in ("skip", "strict"):
        raise DataError(f"data.policy must be 'skip' or 'strict', got {policy!r}")
    lost = report.data_lost
    if policy == "strict" and lost:
        listing = "\n".join(f"  {p}" for p in lost)
        raise DataError(f"{report.source}: {len(lost)} problems (data.policy=strict):\n{listing}")
