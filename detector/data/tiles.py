"""Training on tiles (`data.tiles`): large training images cut into overlapping crops at load time.

A 2000 x 1500 image resized to 600 px shrinks a 20 px object to 6 px, below what the model can
learn; a 512 px crop of it keeps the object at 20 px or more. The crops are the windows sliced
prediction uses (inference/slicing.py `tile_windows`: edge crops shift inward, so there are no
thin leftovers), so the model trains at the scale it predicts at.

Per crop, a box is kept when at least `min_visible` of its area lies inside the crop, clipped to
it (0.5 by default: half an object is still that object; a sliver is not). A less visible box is
left out of that crop's target; its pixels stay, as the seam of a sliced prediction shows them.
Crops holding a kept (non-crowd) box are all used every epoch; crops holding none are negatives,
and `round(negative_ratio x positives)` of them are drawn each epoch (0.1 by default), a seeded
choice of (seed, epoch) alone: the same on every DDP process, whatever its rank or loader seed,
and the number of crops, hence the epoch accounting, never changes.

Crops are made from the reader's `ImageRecord`s (COCO, VOC and YOLO alike) without decoding an
image; each is a `CropRecord`, its boxes in crop pixels, so the data report, the anchor fit and
the previews see what the model sees. Validation stays on whole images (predicted sliced with
`inference.slice`); `check_no_shared_images` refuses a val image that is also a training image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.config import TilesConfig
from detector.config_checks import check_section
from detector.data.dataset import DetectionDataset, SkippedSample
from detector.data.records import ImageRecord
from detector.errors import DataError
from detector.inference.slicing import tile_windows

Window = tuple[int, int, int, int]  # x1, y1, x2, y2 in the image's pixels


@dataclass
class CropRecord(ImageRecord):
    """One training crop: an `ImageRecord` of `window` (its width x height, boxes in crop pixels)
    cut from record `source_index` of the whole-image dataset; `path` is that image's file."""

    source_index: int = 0
    window: Window = (0, 0, 0, 0)


def visible_boxes(boxes: np.ndarray, window: Window, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """(boxes clipped to `window`, in its pixels; mask of the boxes kept): a box is kept when at
    least `min_visible` of its area lies inside the window."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = window
    clipped = np.stack([boxes[:, 0].clip(x1, x2), boxes[:, 1].clip(y1, y2),
                        boxes[:, 2].clip(x1, x2), boxes[:, 3].clip(y1, y2)], 1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    # A small tolerance: a box that lies wholly inside must never fail on float rounding.
    keep = (inside > 0) & (inside >= min_visible * area - 1e-6)
    return (clipped - np.array([x1, y1, x1, y1], np.float64)).astype(np.float32), keep


def crop_records(record: ImageRecord, source_index: int, tiles: TilesConfig) -> list[CropRecord]:
    """Every crop of one image (row by row), each with the boxes it keeps."""
    crops = []
    for window in tile_windows(record.height, record.width, tiles.size, tiles.overlap):
        boxes, keep = visible_boxes(record.boxes, window, tiles.min_visible)
        crops.append(CropRecord(
            image_id=f"{record.image_id}@{window[0]},{window[1]}", path=record.path,
            width=window[2] - window[0], height=window[3] - window[1],
            boxes=boxes[keep], labels=record.labels[keep], iscrowd=record.iscrowd[keep],
            source_index=source_index, window=window))
    return crops


class TiledDataset:
    """The crops of a `DetectionDataset`'s images, as a dataset: `dataset[i] -> (image, target)`
    like the whole-image one (the same augmentation, applied to the crop).

    `records` are this epoch's crops: every positive crop, then the negatives drawn for the epoch
    (`set_epoch`, called by the loader's `set_epoch`). `source` is the whole-image dataset (its
    report, category map and RAM cache serve the crops)."""

    def __init__(self, source: DetectionDataset, tiles: TilesConfig, seed: int = 0) -> None:
        check_section(tiles, "data.tiles")
        if tiles.size <= 0:
            raise DataError("data.tiles.size is 0 (off): there is nothing to cut")
        self.source = source
        self.tiles = tiles
        self.seed = seed
        self.category_map = source.category_map
        self.report = source.report
        self.tiles_per_image: list[int] = []
        self.positives: list[CropRecord] = []
        self.negatives: list[CropRecord] = []
        for index, record in enumerate(source.records):
            crops = crop_records(record, index, tiles)
            self.tiles_per_image.append(len(crops))
            for crop in crops:
                (self.positives if (~crop.iscrowd).any() else self.negatives).append(crop)
        if not self.positives:
            raise DataError(f"data.tiles: no crop of the {len(source.records)} training images keeps an object "
                            f"(size {tiles.size}, min_visible {tiles.min_visible:g}); nothing to train on")
        self.negatives_per_epoch = min(len(self.negatives), int(round(tiles.negative_ratio * len(self.positives))))
        self.epoch = -1
        self.records: list[CropRecord] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's negatives: a function of (seed, epoch) alone."""
        if epoch == self.epoch:
            return
        chosen = np.random.default_rng([self.seed, epoch]).choice(len(self.negatives), self.negatives_per_epoch,
                                                                  replace=False)
        self.records = self.positives + [self.negatives[i] for i in np.sort(chosen)]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positives) + self.negatives_per_epoch

    def __getitem__(self, index: int):
        crop = self.records[index]
        try:
            image = self.source.record_pixels(crop.source_index, crop.window)
        except DataError as error:
            if not self.source.skip_unreadable:
                raise
            return SkippedSample(index, str(crop.path), crop.image_id, str(error))
        return self.source.make_sample(index, crop, image)

    def aspect_ratios(self) -> list[float]:
        """width / height of every crop of epoch 0. All crops have one size unless an image is
        smaller than a crop on a side; a negative drawn later may then be of another orientation
        than its index's, which costs padding, never correctness."""
        return [r.width / r.height for r in self.records]

    def cache_images(self) -> int:
        return self.source.cache_images()  # whole images: every crop of one is cut from it

    def reseed(self, seed: int) -> None:
        self.source.reseed(seed)

    def describe(self) -> str:
        """One line: the crops and how they were made."""
        images = len(self.tiles_per_image)
        tiles = self.tiles
        total = sum(self.tiles_per_image)
        return (f"data.tiles: {tiles.size} px crops, overlap {tiles.overlap:g}: {images} images x "
                f"{total / max(images, 1):.1f} tiles per image = {total} crops; {len(self.positives)} hold an object "
                f"(kept when >= {tiles.min_visible:g} of its area is inside), {self.negatives_per_epoch} of the "
                f"{len(self.negatives)} without one drawn each epoch (negative_ratio {tiles.negative_ratio:g}) "
                f"-> {len(self)} crops per epoch")

    def summary(self) -> str:
        return f"{self.source.summary()}\n  {self.describe()}"


def check_no_shared_images(train_records: list[ImageRecord], val_records: list[ImageRecord]) -> None:
    """A `DataError` when an image file is in both the train and the val set: with data.tiles its
    crops would train the model on the images it is scored on. Files are compared by their
    resolved path (the same file reached by two spellings counts; a byte-identical copy does not)."""
    train_files = {Path(r.path).resolve() for r in train_records}
    shared = sorted({str(Path(r.path).resolve()) for r in val_records} & {str(f) for f in train_files})
    if shared:
        listing = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
        raise DataError(f"data.tiles: {len(shared)} val image(s) are also training images ({listing}); their crops "
                        "would train on what validation scores. Give data.val images that data.train does not hold")
