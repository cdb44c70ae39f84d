"""The images INT8 calibration runs on: a config's training images, read by our own readers.

Each image is fed to the exported graph as inference feeds it (one [1, 3, H, W] float32 batch in
0..1 at its own size): the graph resizes, normalizes and pads it itself, so the ranges recorded
for every backbone tensor are the ranges inference will see. No augmentation.
"""
from __future__ import annotations

import random

import numpy as np

from detector.dependencies import require
from detector.errors import ConfigError

MIN_CALIBRATION_IMAGES = 8  # fewer give ranges that one odd image decides
DEFAULT_CALIBRATION_IMAGES = 300
SAMPLE_SEED = 0


def calibration_dataset(config, source: str):
    """The training set of `config` (a loaded Config), read as `detector train` reads it, without
    augmentation; `source` names the config in errors."""
    from detector.config_checks import check_data_paths
    from detector.data import load_dataset

    if config.data.train is None:
        raise ConfigError(f"{source}: no data.train, which INT8 calibration reads its images from")
    check_data_paths(config.data)
    return load_dataset(config.data.train, None, policy=config.data.policy)


def pick_images(dataset, count: int | None, source: str) -> list[int]:
    """`count` record indices spread over `dataset` by a fixed seed (all of them when it has
    fewer, or when count is None); ConfigError when that is under MIN_CALIBRATION_IMAGES."""
    available = len(dataset)
    wanted = available if count is None else count
    if wanted < MIN_CALIBRATION_IMAGES or available < MIN_CALIBRATION_IMAGES:
        have = (f"--calibration-images {wanted}" if wanted < MIN_CALIBRATION_IMAGES
                else f"data.train has {available} images")
        raise ConfigError(f"{source}: {have}; INT8 calibration needs at least {MIN_CALIBRATION_IMAGES}")
    if wanted >= available:
        return list(range(available))
    return sorted(random.Random(SAMPLE_SEED).sample(range(available), wanted))


def calibration_reader(dataset, indices: list[int]):
    """An onnxruntime CalibrationDataReader over `indices` of `dataset`: {"images": [1, 3, H, W]}.
    An image the reader cannot decode is skipped (the dataset reports it), as training skips it."""
    from onnxruntime.quantization import CalibrationDataReader

    from detector.data.dataset import SkippedSample
    from detector.export.onnx import INPUT_NAME

    class TrainingImages(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(indices)

        def get_next(self) -> dict[str, np.ndarray] | None:
            for index in self.remaining:
                sample = dataset[index]
                if isinstance(sample, SkippedSample):
                    continue
                image = sample[0].numpy().astype(np.float32, copy=False)
                return {INPUT_NAME: np.ascontiguousarray(image[None])}
            return None

        def rewind(self) -> None:
            self.remaining = iter(indices)

    require("onnxruntime", "export", "INT8 calibration")
    return TrainingImages()
