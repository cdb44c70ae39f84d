"""Shared test helpers: real photos from ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _read_rgb(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, read_image

    return read_image(str(path), ImageReadMode.RGB).float() / 255


@pytest.fixture(scope="session")
def raccoon_images() -> list[torch.Tensor]:
    """The first three raccoon val photos as [3, H, W] float tensors in 0..1 (different sizes)."""
    annotations = DATA_ROOT / "raccoon" / "coco_val.json"
    if not annotations.is_file():
        pytest.skip(f"real images not found at {annotations.parent} (../shared/data is absent)")
    files = [image["file_name"] for image in json.loads(annotations.read_text())["images"][:3]]
    return [_read_rgb(annotations.parent / name) for name in files]


@pytest.fixture(scope="session")
def raccoon_sample() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two raccoon train photos and their real boxes as targets (label 1)."""
    annotations = DATA_ROOT / "raccoon" / "coco_train.json"
    if not annotations.is_file():
        pytest.skip(f"real images not found at {annotations.parent} (../shared/data is absent)")
    data = json.loads(annotations.read_text())
    images, targets = [], []
    for image in data["images"][:2]:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32)
        images.append(_read_rgb(annotations.parent / image["file_name"]))
        targets.append({"boxes": xyxy, "labels": torch.ones(len(boxes), dtype=torch.int64)})
    return images, targets
