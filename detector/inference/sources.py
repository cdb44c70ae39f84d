"""What a prediction run reads: files, folders (searched recursively for image and video
suffixes) and glob patterns, resolved to the files to predict, in order, each once."""
from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

from detector.inference.skipping import Skipped

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def find_sources(patterns: Sequence[str]) -> Iterator[Path | Skipped]:
    """The files of `patterns` (files, folders searched recursively for image and video
    suffixes, glob patterns), in order, each once; a pattern that finds nothing is `Skipped`."""
    seen: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            missing = "no images or videos in the folder"
        elif path.exists():
            found, missing = [path], None
        elif any(ch in pattern for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            missing = "no files match the pattern"
        else:
            found, missing = [], "no such file or folder"
        if not found:
            yield Skipped(pattern, missing)
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                yield file
