"""Helpers for the data tests: tiny image files, and the real annotation files committed in real/."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

REAL_DATA = Path(__file__).resolve().parent / "real"  # see real/README.md


def real_json(name: str) -> Path:
    """A real COCO JSON committed under tests/data/real, e.g. 'raccoon/coco_train.json'."""
    return REAL_DATA / name


def write_blank_images(annotations: Path, root: Path) -> Path:
    """A plain image at every `file_name` of a COCO JSON, at the size the JSON gives it, under
    `root`: the real annotations can then be read with image checks on, without the real photos."""
    for image in json.loads(annotations.read_text())["images"]:
        write_image(root / image["file_name"], image["width"], image["height"])
    return root


def write_image(path: Path, width: int, height: int, colour=(90, 90, 90)) -> Path:
    """A plain BGR PNG of the given size (PNG: exact pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), colour, np.uint8))
    return path


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
