"""Pictures made of images: training batches as the loader yields them, and the images with the
most errors with their true positives, false positives and missed boxes in three colours.

Tiles are drawn with OpenCV (engine/plots.py's box helper), each image scaled to fit a square
cell, boxes scaled with it, so thin boxes stay sharp; a title strip names the image.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from detector.analysis.detections import EvalSet
from detector.analysis.errors import ErrorBreakdown
from detector.analysis.operating_point import OperatingPoint
from detector.engine.plots import PREDICTION_COLOR, TRUTH_COLOR, draw_box, write_image

MISSED_COLOR = (30, 120, 255)  # RGB, apart from the red and green of engine/plots.py
CELL = 480  # pixels of one tile's longer side
TITLE_HEIGHT = 22


def tile(image: np.ndarray, boxes: list[tuple[np.ndarray, str, tuple[int, int, int], bool]], title: str,
         cell: int = CELL) -> np.ndarray:
    """One BGR tile of `cell` x (`cell` + title): `image` (H, W, 3 uint8 RGB) scaled to fit, with
    `boxes` (xyxy in image pixels, text, RGB colour, text above the box?) and a title strip."""
    scale = cell / max(image.shape[:2])
    resized = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((cell + TITLE_HEIGHT, cell, 3), 255, np.uint8)
    canvas[TITLE_HEIGHT:TITLE_HEIGHT + resized.shape[0], :resized.shape[1]] = resized[:, :, ::-1]
    body = canvas[TITLE_HEIGHT:]
    for box, text, color, above in boxes:
        draw_box(body, np.asarray(box, np.float64) * scale, text, color, 2, text_above=above)
    cv2.putText(canvas, title[:70], (4, TITLE_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def mosaic(tiles: list[np.ndarray], columns: int | None = None, header: np.ndarray | None = None) -> np.ndarray:
    """Tiles (same size, BGR) on a grid, with an optional header strip above."""
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    height, width = tiles[0].shape[:2]
    grid = np.full((rows * height, columns * width, 3), 255, np.uint8)
    for index, image in enumerate(tiles):
        r, c = divmod(index, columns)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    if header is not None:
        padded = np.full((header.shape[0], grid.shape[1], 3), 255, np.uint8)
        padded[:, :min(header.shape[1], grid.shape[1])] = header[:, :grid.shape[1]]
        grid = np.concatenate([padded, grid])
    return grid


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int = 900) -> np.ndarray:
    """A white BGR strip with a coloured square and a name per entry."""
    strip = np.full((34, width, 3), 255, np.uint8)
    x = 8
    for name, rgb in entries:
        cv2.rectangle(strip, (x, 9), (x + 16, 25), rgb[::-1], cv2.FILLED)
        cv2.putText(strip, name, (x + 22, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)[0][0] + 20
    return strip


def draw_batch(images, targets, class_names: Sequence[str], out_path: str | Path) -> Path:
    """One training batch as the loader yields it: tensors [3, H, W] in 0..1 (augmented, before
    the model's resize) and their targets, every box with its class name."""
    tiles = []
    for image, target in zip(images, targets):
        rgb = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        boxes = [(box, _name(class_names, int(label)), TRUTH_COLOR, True)
                 for box, label in zip(target["boxes"].numpy(), target["labels"].numpy())]
        size = f"{rgb.shape[1]}x{rgb.shape[0]}"
        tiles.append(tile(rgb, boxes, f"{Path(str(target.get('file', ''))).name} {size}, {len(boxes)} boxes"))
    return write_image(out_path, mosaic(tiles), jpeg_quality=90)


def draw_worst_images(evalset: EvalSet, breakdown: ErrorBreakdown, point: OperatingPoint, k: int,
                      out_path: str | Path, image_root: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The k images with the most errors at the operating point: true positives (green), false
    positives (red, with their TIDE type) and missed boxes (blue). Returns (the file or None,
    the images that could not be read)."""
    from detector.data.dataset import read_image

    tiles, unreadable = [], []
    for rank, entry in enumerate(point.worst_images(k), start=1):
        image_boxes, verdict = evalset.images[entry.index], breakdown.images[entry.index]
        path = resolve_image(image_boxes.file_name, image_root)
        if path is None:
            unreadable.append(image_boxes.file_name)
            continue
        names = evalset.class_names
        boxes = [(image_boxes.gt_boxes[g], f"{names[image_boxes.gt_classes[g]]} missed", MISSED_COLOR, False)
                 for g in entry.missed]
        boxes += [(image_boxes.det_boxes[d], f"{names[image_boxes.det_classes[d]]} {image_boxes.det_scores[d]:.2f}",
                   TRUTH_COLOR, True) for d in entry.true_positives]
        boxes += [(image_boxes.det_boxes[d], f"{names[image_boxes.det_classes[d]]} {image_boxes.det_scores[d]:.2f} "
                   f"{verdict.det_error[d]}", PREDICTION_COLOR, True) for d in entry.false_positives]
        title = (f"#{rank} {Path(image_boxes.file_name).name}: {len(entry.false_positives)} FP, "
                 f"{len(entry.missed)} missed, {len(entry.true_positives)} TP")
        tiles.append(tile(read_image(path), boxes, title))
    if not tiles:
        return None, unreadable
    key = legend([("true positive", TRUTH_COLOR), ("false positive (TIDE type)", PREDICTION_COLOR),
                  ("missed", MISSED_COLOR)], width=max(900, CELL))
    return write_image(out_path, mosaic(tiles, columns=min(3, len(tiles)), header=key), jpeg_quality=90), unreadable


def resolve_image(file_name: str, image_root: str | Path | None) -> Path | None:
    """The image file: `file_name` as given (absolute or relative to the working folder), else
    under `image_root`; None when neither exists."""
    for candidate in (Path(file_name), Path(image_root) / file_name if image_root else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else f"label {label}"
