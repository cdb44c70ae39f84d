"""Helpers for the data tests: tiny image files, and the real annotation files committed in real/."""
from __future__ import annotations

import json
import struct
import zlib
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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png(side: int) -> bytes:
    """A complete, valid grayscale PNG of side x side black pixels: a few hundred KB that decode
    to side^2 bytes (30000 -> 875 KB for 900 Mpx, the probe of the issue)."""
    compressor = zlib.compressobj(9)
    rows = (b"\x00" * (side + 1)) * 100  # filter byte + pixels, 100 rows at a time
    stream = b"".join(compressor.compress(rows) for _ in range(side // 100))
    stream += compressor.compress((b"\x00" * (side + 1)) * (side % 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")
