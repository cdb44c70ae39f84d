"""Training augmentation with albumentations, built from `AugmentConfig`.

Order: horizontal flip (`hflip`), photometric jitter (ColorJitter: `brightness`, `contrast`,
`saturation`, `hue`). There is no rescale here: the model resizes every image to its own size,
so scale jitter is the model's (`model.transform.train_min_sizes`, modeling/transform.py).
Boxes move with the image (pascal_voc = xyxy pixels); a box that ends up below 1 px^2 or less
than 10% visible is dropped with its label.
Validation uses no augmentation. The random state is albumentations' own, reseeded per
loader worker and epoch (see loader.py), so a run is reproducible.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import
import albumentations as A  # noqa: E402

from detector.config import AugmentConfig  # noqa: E402
from detector.config_checks import check_section  # noqa: E402

MIN_AREA = 1.0  # px^2: smaller boxes after augmentation are dropped
MIN_VISIBILITY = 0.1  # fraction of a box that must stay inside the image


class Augmentation:
    """`(image HWC uint8 RGB, boxes [N,4] xyxy, labels [N]) -> the same, augmented`."""

    def __init__(self, config: AugmentConfig, seed: int | None = None) -> None:
        check_section(config, "data.augment")  # also for an AugmentConfig built without load_config
        transforms = []
        if config.hflip > 0:
            transforms.append(A.HorizontalFlip(p=config.hflip))
        jitter = (config.brightness, config.contrast, config.saturation, config.hue)
        self.config = config
        self.moves_boxes = bool(transforms)  # before the jitter: every transform so far is geometric
        if any(jitter):
            transforms.append(A.ColorJitter(*jitter, p=1.0))
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_area=MIN_AREA,
                                   min_visibility=MIN_VISIBILITY, clip=True, filter_invalid_bboxes=True)
        self.compose = A.Compose(transforms, bbox_params=bbox_params if self.moves_boxes else None, seed=seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.moves_boxes:  # photometric only: the boxes stay
            return (self.compose(image=image)["image"], np.asarray(boxes, np.float32).reshape(-1, 4),
                    np.asarray(labels, np.int64).reshape(-1))
        out = self.compose(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, np.int64))
        return (out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
                np.asarray(out["labels"], np.int64).reshape(-1))

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"Augmentation({self.config})"


def build_augmentation(config: AugmentConfig | None, *, train: bool, seed: int | None = None) -> Augmentation | None:
    """The training augmentation, or None for validation / when nothing is switched on."""
    if not train or config is None:
        return None
    check_section(config, "data.augment")  # also for an AugmentConfig built without load_config
    jitter = (config.brightness, config.contrast, config.saturation, config.hue)
    if config.hflip == 0 and not any(jitter):
        return None
    return Augmentation(config, seed)
