"""The torch dataset over ImageRecords, and `load_dataset`, which picks the reader for a config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from detector.choices import DATA_FORMATS, spell
from detector.config import AugmentConfig, DatasetConfig
from detector.data.image_header import LOCAL_MAX_PIXELS, read_image_header
from detector.data.records import CategoryMap, DatasetReport, ImageRecord, raise_if_strict
from detector.errors import AugmentationError, DataError, ImageFileError, ImageTooLargeError

DEFAULT_SYNTHETIC_ROOT = Path("~/.cache/detector/synthetic")

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def read_image(path: str | Path, max_pixels: int = LOCAL_MAX_PIXELS) -> np.ndarray:
    """An image file as HWC uint8 RGB. OpenCV applies the EXIF orientation and turns
    grayscale, RGBA (alpha dropped), palette and 16-bit images into 8-bit 3-channel ones.
    A file that is missing, empty, not an image, cut short, undecodable or larger than
    `max_pixels` (ImageTooLargeError, from its header: image_header.py) raises a `DataError`
    naming it and why. The header is checked before OpenCV decodes: its codecs print to stderr,
    decode a truncated JPEG without any error (grey below the cut) and allocate any size."""
    try:
        read_image_header(path, str(path), max_pixels)
    except ImageTooLargeError:
        raise
    except ImageFileError as error:
        raise DataError(f"{path}: cannot read the image ({error.reason})") from None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot read the image (not a readable image)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a format only OpenCV reads has no header check
        raise ImageTooLargeError(str(path), f"{image.shape[1]}x{image.shape[0]} pixels, more than the limit of {max_pixels}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_record_image(record: ImageRecord) -> np.ndarray:
    """The record's image, checked against the size its boxes were annotated on."""
    image = read_image(record.path)
    height, width = image.shape[:2]
    if (width, height) != (record.width, record.height):
        raise DataError(f"{record.path}: image is {width}x{height} but its record (image id "
                        f"{record.image_id!r}) says {record.width}x{record.height}; its boxes would be wrong")
    return image


@dataclass(frozen=True)
class SkippedSample:
    """What `DetectionDataset[i]` returns instead of a sample when its image cannot be decoded
    (a file that changed or broke after the load-time check) and unreadable images are skipped.
    The loader drops it from the batch and keeps it in `loader.skipped`."""

    index: int
    path: str
    image_id: int | str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} (image id {self.image_id!r}) skipped: {self.reason}"


class DetectionDataset(torch.utils.data.Dataset):
    """`dataset[i] -> (image [3,H,W] float 0..1 RGB, {"boxes": float32 [N,4] xyxy,
    "labels": int64 [N] in 1..K, "image_id": i})`. Crowd / difficult boxes are left out of the
    target; they stay in `records` for evaluation.

    An image that cannot be decoded raises a `DataError` naming it, or, with
    `skip_unreadable` (data.policy "skip"), comes back as a `SkippedSample`."""

    def __init__(self, records: list[ImageRecord], category_map: CategoryMap,
                 report: DatasetReport | None = None, transform: Transform | None = None,
                 skip_unreadable: bool = False) -> None:
        self.records = list(records)
        self.category_map = category_map
        self.report = report
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.cached_images: list[np.ndarray | None] | None = None  # data.cache: ram

    def cache_images(self) -> int:
        """Decode every image once and keep it in RAM (`data.cache: ram`), so that epochs after
        the first decode no JPEG; returns the bytes held. Call it before the loader starts its
        workers: they inherit the cache (copy-on-write) instead of filling one each. An image
        that fails to decode is not cached; it is read, and skipped or raised, when used."""
        self.cached_images = []
        for record in self.records:
            try:
                self.cached_images.append(read_record_image(record))
            except DataError:
                self.cached_images.append(None)
        return sum(image.nbytes for image in self.cached_images if image is not None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | SkippedSample:
        record = self.records[index]
        try:
            image = self.record_pixels(index)
        except DataError as error:
            if not self.skip_unreadable:
                raise
            return SkippedSample(index, str(record.path), record.image_id, str(error))
        return self.make_sample(index, record, image)

    def record_pixels(self, index: int, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The pixels of record `index` (from the RAM cache when there), or of its `window`
        (x1, y1, x2, y2: a training crop, data/tiles.py), as a new array. A `DataError` when
        the image cannot be decoded."""
        cached = self.cached_images[index] if self.cached_images is not None else None
        image = cached if cached is not None else read_record_image(self.records[index])
        if window is not None:
            x1, y1, x2, y2 = window
            image = image[y1:y2, x1:x2]
        # A copy: no augmentation may ever change the cached pixels in place.
        return image.copy() if cached is not None or window is not None else image

    def make_sample(self, index: int, record: ImageRecord, image: np.ndarray) -> tuple[torch.Tensor, dict]:
        """(tensor, target) of `record` drawn as `image` (HWC uint8 RGB, the record's size),
        augmented; its target's "image_id" is `index`."""
        train = ~record.iscrowd
        boxes, labels = record.boxes[train], record.labels[train]
        if self.transform is not None:
            try:
                image, boxes, labels = self.transform(image, boxes, labels)
            except Exception as error:  # name the sample; a bug here must not look like bad data
                raise AugmentationError(f"{record.path} (image id {record.image_id!r}): augmentation failed: "
                                        f"{type(error).__name__}: {error}") from error
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "image_id": index,
            "file": str(record.path),  # named by warnings about this image (e.g. matching out of memory)
        }
        return tensor, target

    def aspect_ratios(self) -> list[float]:
        """width / height of every record, from the records (no image is decoded)."""
        return [r.width / r.height for r in self.records]

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation's random state (called per loader worker and epoch)."""
        if self.transform is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def summary(self) -> str:
        return self.report.summary() if self.report is not None else f"{len(self)} images"


def read_records(config: DatasetConfig, category_map: CategoryMap | None = None, *,
                 verify_images: bool = True) -> tuple[list[ImageRecord], CategoryMap, DatasetReport]:
    """Dispatch on `config.format` to the reader; (records, category map, report)."""
    from detector.data.coco import read_coco
    from detector.data.datasets import resolve_data_path
    from detector.data.synthetic import make_synthetic_dataset
    from detector.data.voc import read_voc
    from detector.data.yolo import read_yolo

    def need(key: str) -> str:
        value = getattr(config, key)
        if not value:
            raise DataError(f"data: format {config.format!r} needs '{key}' set in the dataset config")
        return value

    def path(key: str) -> Path | None:  # ${DETECTOR_DATA}/NAME/... -> the installed data set NAME
        value = getattr(config, key)
        return resolve_data_path(value) if value else None

    if config.format == "coco":
        need("annotations")
        return read_coco(path("annotations"), path("images"), category_map, verify_images=verify_images)
    if config.format == "voc":
        need("root")
        return read_voc(path("root"), config.split, category_map, verify_images=verify_images)
    if config.format == "yolo":
        need("root")
        return read_yolo(path("root"), config.split, path("names"), category_map)
    if config.format == "synthetic":
        root = Path(config.root).expanduser() if config.root else DEFAULT_SYNTHETIC_ROOT.expanduser()
        annotations = make_synthetic_dataset(root, need("split"), config.num_images, config.seed, config.scene,
                                             config.class_weights)
        return read_coco(annotations, None, category_map, verify_images=verify_images)
    raise DataError(f"data: unknown dataset format {config.format!r}; expected {spell(DATA_FORMATS)}")


def load_dataset(config: DatasetConfig, category_map: CategoryMap | None = None, *,
                 augment: AugmentConfig | None = None, policy: str = "skip", seed: int | None = None,
                 verify_images: bool = True) -> DetectionDataset:
    """Read one split into a `DetectionDataset`.

    `category_map`: the training set's, so a validation set gets the same labels (a class it
    does not know is an error). `augment`: training augmentation (None for validation).
    `policy`: "skip" reports bad boxes/images and goes on (an image that fails to decode later,
    mid-epoch, is skipped and reported by the loader); "strict" raises a `DataError` listing
    every box, annotation or image that would be lost. `verify_images`: read every image header
    at load time (missing / unreadable / mis-sized files are found before training starts).
    """
    from detector.data.augment import build_augmentation

    records, category_map, report = read_records(config, category_map, verify_images=verify_images)
    raise_if_strict(report, policy)
    transform = build_augmentation(augment, train=augment is not None, seed=seed)
    return DetectionDataset(records, category_map, report, transform, skip_unreadable=policy == "skip")
