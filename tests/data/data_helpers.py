"""Helpers for the data tests: tiny image files, and the real datasets in ../shared/data."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_json(name: str) -> Path:
    """A real COCO JSON under ../shared/data, or a skip saying it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real dataset not found: {path} (../shared/data is absent)")
    return path


def write_image(path: Path, width: int, height: int, colour=(90, 90, 90)) -> Path:
    """A plain BGR PNG of the given size (PNG: exact pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), colour, np.uint8))
    return path


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
