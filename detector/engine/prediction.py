"""Prediction over files, folders, globs and videos, for `detector predict`.

Every readable source is predicted; every other one (missing, empty, not an image, truncated,
an unreadable video, a folder or glob with nothing in it) is named with its reason and
skipped, unless `strict`. Results are written as they come: the annotated image or video of
each source, and `predictions.json` and `skipped.txt`, rewritten atomically, so a crash or
Ctrl-C at image 900 of 1000 leaves the first 899 on disk and `predictions.json` is whole JSON
whenever it exists. The predictor only needs `predict(list of RGB arrays)` returning
`[{"boxes", "labels", "scores"}]` and its `category_ids` / `category_names`, whatever runs it.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.data.dataset import read_image
from detector.data.records import DataError
from detector.engine.checkpoint import write_atomically
from detector.engine.plots import draw_boxes, write_image
from detector.errors import DetectorError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
# predictions.json grows with every image; past the point where rewriting it would take more
# than this share of the run, it is rewritten less often (always at the end and on Ctrl-C).
MAX_WRITE_SHARE = 0.1


class SourceError(DetectorError):
    """A source cannot be predicted (with `strict`); the message names it and why."""


@dataclass(frozen=True)
class Skipped:
    """A source left out of a prediction run, and why."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class PredictionRun:
    """What a run did: the sources predicted and the ones skipped."""

    predicted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every source predicted; 1: some skipped; 2: none predicted."""
        if not self.predicted:
            return 2
        return 1 if self.skipped else 0


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


def predict_sources(predictor, patterns: Sequence[str], out: str | Path, strict: bool = False,
                    log: Callable[[str], None] = print,
                    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> PredictionRun:
    """Predict every source of `patterns` into folder `out`; `log` gets a line per source
    predicted, `warn` one per source skipped. With `strict` the first source that cannot be
    read raises a `SourceError` (what came before it stays written)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg prints its own lines for a broken video
    files = OutputFolder(Path(out))
    run = PredictionRun()
    files.write()  # from the start, the folder's predictions.json is this run's
    try:
        for source in find_sources(patterns):
            result = source if isinstance(source, Skipped) else predict_source(predictor, source, files)
            if isinstance(result, Skipped):
                run.skipped.append(result)
                files.add_skipped(result)
                if strict:
                    raise SourceError(str(result))
                warn(f"skipped {result}")
            else:
                run.predicted.append(str(source))
                files.add(result)
                log(f"{source}: {len(result['frames'])} frames -> {result['output']}" if "frames" in result
                    else f"{source}: {len(result['detections'])} detections")
    finally:
        files.write()
    return run


def predict_source(predictor, path: Path, files: OutputFolder) -> dict | Skipped:
    """The predictions.json entry of an image or video file (its annotated copy written), or
    why it was skipped."""
    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return predict_video(predictor, path, files)
        return predict_image(predictor, path, files)
    except (SourceError, DataError) as error:
        return Skipped(str(path), str(error).removeprefix(f"{path}: "))  # the skip names the file already


def predict_image(predictor, path: Path, files: OutputFolder) -> dict:
    image = read_image(path)
    detection = predictor.predict([image])[0]
    output = files.output_path(path, ".jpg")
    files.write_image(output, draw_boxes(image, *_boxes_scores_labels(detection), [], [], predictor.category_names,
                                         score_thresh=0.0))
    return {"file": str(path), "output": str(output), "detections": to_json(detection, predictor)}


def predict_video(predictor, path: Path, files: OutputFolder) -> dict:
    """An annotated .mp4 of the video at `path` and the detections of each of its frames."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    writer, frames, output = None, [], files.output_path(path, ".mp4")
    try:
        if not capture.isOpened():
            raise SourceError(f"{path}: not a readable video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            detection = predictor.predict([rgb])[0]
            annotated = draw_boxes(rgb, *_boxes_scores_labels(detection), [], [], predictor.category_names,
                                   score_thresh=0.0)
            if writer is None:
                height, width = annotated.shape[:2]
                writer = cv2.VideoWriter(str(output), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            writer.write(annotated)
            frames.append(to_json(detection, predictor))
    finally:  # a video stopped half-way is still a playable file
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        raise SourceError(f"{path}: no frames could be read")
    return {"file": str(path), "output": str(output), "frames": frames}


def to_json(detection: dict, predictor) -> list[dict]:
    """One image's detections with the dataset's own category ids and names."""
    boxes, scores, labels = _boxes_scores_labels(detection)
    return [
        {"bbox_xyxy": [round(float(v), 2) for v in box], "score": round(float(score), 4),
         "category_id": int(predictor.category_ids[label - 1]), "name": predictor.category_names[label - 1]}
        for box, score, label in zip(boxes, scores, labels.tolist())
    ]


class OutputFolder:
    """The folder of a prediction run: annotated files named after their sources, and
    predictions.json / skipped.txt, rewritten atomically as entries come."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.entries: list[str] = []  # each entry's JSON, kept so a rewrite does not serialize again
        self.skipped: list[Skipped] = []
        self.names: set[str] = set()
        self.next_write = 0.0

    def output_path(self, source: Path, suffix: str) -> Path:
        """`<stem><suffix>`, or `<stem>_2<suffix>`... when another source had that stem."""
        name, number = f"{source.stem}{suffix}", 1
        while name in self.names:
            number += 1
            name = f"{source.stem}_{number}{suffix}"
        self.names.add(name)
        return self.folder / name

    def write_image(self, path: Path, bgr: np.ndarray) -> None:
        write_image(path, bgr)

    def add(self, entry: dict) -> None:
        self.entries.append(json.dumps(entry))
        if time.monotonic() >= self.next_write:
            self.write()

    def add_skipped(self, skipped: Skipped) -> None:
        self.skipped.append(skipped)
        self.write()

    def write(self) -> None:
        started = time.monotonic()
        skipped = [json.dumps({"source": s.source, "reason": s.reason}) for s in self.skipped]
        text = f'{{\n "predictions": {_json_list(self.entries)},\n "skipped": {_json_list(skipped)}\n}}\n'
        write_atomically(self.folder / "predictions.json", lambda file: file.write(text.encode()))
        listing = "".join(f"{s}\n" for s in self.skipped)
        write_atomically(self.folder / "skipped.txt", lambda file: file.write(listing.encode()))
        took = time.monotonic() - started
        self.next_write = time.monotonic() + took * (1 - MAX_WRITE_SHARE) / MAX_WRITE_SHARE


def _boxes_scores_labels(detection: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    as_numpy = lambda v: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)  # noqa: E731
    return (as_numpy(detection["boxes"]).reshape(-1, 4), as_numpy(detection["scores"]).reshape(-1),
            as_numpy(detection["labels"]).reshape(-1).astype(np.int64))


def _json_list(items: list[str]) -> str:
    """A JSON list of already serialized items, one per line."""
    return "[\n  " + ",\n  ".join(items) + "\n ]" if items else "[]"
