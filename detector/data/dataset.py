"""The torch dataset over ImageRecords, and `load_dataset`, which picks the reader for a config."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from detector.config import AugmentConfig, DatasetConfig
from detector.data.records import CategoryMap, DataError, DatasetReport, ImageRecord, raise_if_strict

DEFAULT_SYNTHETIC_ROOT = Path("~/.cache/detector/synthetic")

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def read_image(path: str | Path) -> np.ndarray:
    """An image file as HWC uint8 RGB. OpenCV applies the EXIF orientation and turns
    grayscale, RGBA (alpha dropped), palette and 16-bit images into 8-bit 3-channel ones."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "file not found" if not Path(path).is_file() else "not a readable image"
        raise DataError(f"{path}: cannot read the image ({reason})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class DetectionDataset(torch.utils.data.Dataset):
    """`dataset[i] -> (image [3,H,W] float 0..1 RGB, {"boxes": float32 [N,4] xyxy,
    "labels": int64 [N] in 1..K, "image_id": i})`. Crowd / difficult boxes are left out of the
    target; they stay in `records` for evaluation."""

    def __init__(self, records: list[ImageRecord], category_map: CategoryMap,
                 report: DatasetReport | None = None, transform: Transform | None = None) -> None:
        self.records = list(records)
        self.category_map = category_map
        self.report = report
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        if (width, height) != (record.width, record.height):
            raise DataError(f"{record.path}: image is {width}x{height} but its record (image id "
                            f"{record.image_id!r}) says {record.width}x{record.height}; its boxes would be wrong")
        train = ~record.iscrowd
        boxes, labels = record.boxes[train], record.labels[train]
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "image_id": index,
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
    from detector.data.synthetic import make_synthetic_dataset
    from detector.data.voc import read_voc
    from detector.data.yolo import read_yolo

    def need(key: str) -> str:
        value = getattr(config, key)
        if not value:
            raise DataError(f"data: format {config.format!r} needs '{key}' set in the dataset config")
        return value

    if config.format == "coco":
        return read_coco(need("annotations"), config.images, category_map, verify_images=verify_images)
    if config.format == "voc":
        return read_voc(need("root"), config.split, category_map, verify_images=verify_images)
    if config.format == "yolo":
        return read_yolo(need("root"), config.split, config.names, category_map)
    if config.format == "synthetic":
        root = Path(config.root).expanduser() if config.root else DEFAULT_SYNTHETIC_ROOT.expanduser()
        annotations = make_synthetic_dataset(root, need("split"), config.num_images, config.seed)
        return read_coco(annotations, None, category_map, verify_images=verify_images)
    raise DataError(f"data: unknown dataset format {config.format!r}; expected coco, voc, yolo or synthetic")


def load_dataset(config: DatasetConfig, category_map: CategoryMap | None = None, *,
                 augment: AugmentConfig | None = None, policy: str = "skip", seed: int | None = None,
                 verify_images: bool = True) -> DetectionDataset:
    """Read one split into a `DetectionDataset`.

    `category_map`: the training set's, so a validation set gets the same labels (a class it
    does not know is an error). `augment`: training augmentation (None for validation).
    `policy`: "skip" reports bad boxes/images and goes on; "strict" raises a `DataError` listing
    every box, annotation or image that would be lost. `verify_images`: read every image header
    at load time (missing / unreadable / mis-sized files are found before training starts).
    """
    from detector.data.augment import build_augmentation

    records, category_map, report = read_records(config, category_map, verify_images=verify_images)
    raise_if_strict(report, policy)
    transform = build_augmentation(augment, train=augment is not None, seed=seed)
    return DetectionDataset(records, category_map, report, transform)
