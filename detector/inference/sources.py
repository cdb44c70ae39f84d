"""What a prediction run reads: files, folders (searched recursively for image and video
suffixes), glob patterns and lists of paths (`@paths.txt`), resolved to the files to predict,
in order, each once.

Listing is lazy: a folder is walked one directory at a time (each sorted by name) and a list
is read line by line, so a million sources start predicting at once and are never held as
anything but the set of paths already yielded (which keeps each file once)."""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from detector.errors import SourceError
from detector.inference.skipping import Skipped

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
LIST_PREFIX = "@"  # `@paths.txt`: a text file naming one source per line


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def is_list(pattern: str) -> bool:
    return pattern.startswith(LIST_PREFIX) and len(pattern) > 1


def check_source_lists(patterns: Sequence[str]) -> None:
    """A `SourceError` naming the first `@list` that cannot be read, before a run starts
    (a list found unreadable half-way would leave a run half done)."""
    for pattern in patterns:
        if is_list(pattern):
            path = Path(pattern[len(LIST_PREFIX):])
            try:
                with open(path, "rb") as file:
                    file.read(1)
            except OSError as error:
                why = "is a folder, not a text file" if isinstance(error, IsADirectoryError) else \
                    (error.strerror or str(error)).lower()
                raise SourceError(f"{path}: cannot read the list of sources ({why})") from None


def find_sources(patterns: Sequence[str]) -> Iterator[Path | Skipped]:
    """The files of `patterns` (files, folders searched recursively for image and video
    suffixes, glob patterns, `@lists` of any of these, one per line: blank lines and `#`
    comments ignored, relative paths taken from the list's folder), in order, each once; a
    pattern that finds nothing is `Skipped`."""
    seen: set[Path] = set()
    for pattern in expand_lists(patterns):
        found_any = False
        for file in files_of(pattern):
            found_any = True
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                yield file
        if not found_any:
            yield Skipped(pattern, why_nothing(pattern))


def expand_lists(patterns: Sequence[str]) -> Iterator[str]:
    """`patterns` with each `@list` replaced by the lines it holds, read as they are needed."""
    for pattern in patterns:
        if not is_list(pattern):
            yield pattern
            continue
        listing = Path(pattern[len(LIST_PREFIX):])
        check_source_lists([pattern])
        with open(listing, encoding="utf-8") as file:
            for line in file:
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    yield entry if os.path.isabs(entry) else str(listing.parent / entry)


def files_of(pattern: str) -> Iterator[Path]:
    path = Path(pattern)
    if path.is_dir():
        yield from walk(path)
    elif path.exists():
        yield path
    elif any(ch in pattern for ch in "*?["):
        yield from sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def walk(folder: Path) -> Iterator[Path]:
    """The image and video files under `folder`, one directory at a time, each sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:  # a sub-folder that cannot be listed holds nothing to predict
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):  # a linked folder could loop back
            yield from walk(Path(entry.path))
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            yield Path(entry.path)


def why_nothing(pattern: str) -> str:
    if Path(pattern).is_dir():
        return "no images or videos in the folder"
    if any(ch in pattern for ch in "*?["):
        return "no files match the pattern"
    return "no such file or folder"
