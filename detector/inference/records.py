"""One image file -> one JSON Lines record: the per-image steps of a streamed prediction run
(`detector predict --ray`), split where a cluster splits them: `decode` runs on CPU tasks,
`predict_records` in the actor that holds the predictor.

A record is either `{"file", "width", "height", "detections"}` (detections as in
predictions.json: inference/categories.py `to_json`) or `{"file", "skipped": reason}`, the
reason worded exactly as local predict words it (the same reader, size check and skip rule).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.data.dataset import read_image
from detector.inference.categories import to_json
from detector.inference.skipping import SKIPPABLE_ERRORS, Skipped
from detector.inference.sources import is_video

# Videos need one process to read their frames in order and write one annotated file.
VIDEO_REASON = "a video: predict videos without --ray"


def decode(file: str) -> np.ndarray | Skipped:
    """The RGB uint8 image of `file`, or why it cannot be predicted."""
    path = Path(file)
    if is_video(path):
        return Skipped(file, VIDEO_REASON)
    try:
        return read_image(path)
    except SKIPPABLE_ERRORS as error:
        return Skipped.because(path, error)


def predict_records(predictor, files: Sequence[str], images: Sequence[np.ndarray | Skipped],
                    batch_size: int) -> list[dict]:
    """One record per file, in order: the detections of each decoded image (predicted in
    batches of `batch_size`; results do not depend on the batch), or why it was skipped."""
    checked: list[np.ndarray | Skipped] = []
    for file, image in zip(files, images):
        if not isinstance(image, Skipped):
            try:
                predictor.check_size(image.shape[0], image.shape[1], file)
            except SKIPPABLE_ERRORS as error:
                image = Skipped.because(Path(file), error)
        checked.append(image)
    ready = [image for image in checked if not isinstance(image, Skipped)]
    detections = iter(predictor.predict(ready, batch_size=batch_size) if ready else [])
    records = []
    for file, image in zip(files, checked):
        if isinstance(image, Skipped):
            records.append({"file": file, "skipped": image.reason})
        else:
            records.append({"file": file, "width": int(image.shape[1]), "height": int(image.shape[0]),
                            "detections": to_json(next(detections), predictor)})
    return records
