"""`predict_sources`: every source of a prediction run (`detector predict`) through a predictor
into an output folder.

Every readable source is predicted; every other one is named with its reason and skipped
(inference/skipping.py), unless `strict`. Results are written as they come (inference/writer.py),
one source at a time in this process; `detector predict --ray` runs the same per-image steps
(inference/records.py) on a Ray cluster instead (inference/ray_predict.py).
The predictor only needs `predict(list of RGB arrays)` returning `[{"boxes", "labels", "scores"}]`,
`check_size(height, width, name)` and its `category_ids` / `category_names`, whatever runs it
(inference/loading.py).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from detector.data.dataset import read_image
from detector.engine.plots import draw_boxes
from detector.errors import SourceError
from detector.inference.categories import boxes_scores_labels, to_json
from detector.inference.skipping import SKIPPABLE_ERRORS, PredictionRun, Skipped
from detector.inference.sources import find_sources, is_video
from detector.inference.writer import OutputFolder


def predict_sources(predictor, patterns: Sequence[str], out: str | Path, strict: bool = False,
                    log: Callable[[str], None] = print,
                    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> PredictionRun:
    """Predict every source of `patterns` into folder `out`; `log` gets a line per source
    predicted, `warn` one per source skipped. With `strict` the first source that cannot be
    predicted raises a `SourceError` (what came before it stays written)."""
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
        try:
            files.write()
        finally:
            files.close()
    return run


def predict_source(predictor, path: Path, files: OutputFolder) -> dict | Skipped:
    """The predictions.json entry of an image or video file (its annotated copy written), or
    why it was skipped: unreadable, or too thin for the model's resize (a 1 x 2000 strip)."""
    try:
        if is_video(path):
            return predict_video(predictor, path, files)
        return predict_image(predictor, path, files)
    except SKIPPABLE_ERRORS as error:
        return Skipped.because(path, error)


def predict_image(predictor, path: Path, files: OutputFolder) -> dict:
    image = read_image(path)
    predictor.check_size(image.shape[0], image.shape[1], str(path))
    detection = predictor.predict([image])[0]
    output = files.output_path(path, ".jpg")
    files.write_image(output, draw_boxes(image, *boxes_scores_labels(detection), [], [], predictor.category_names,
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
            predictor.check_size(rgb.shape[0], rgb.shape[1], str(path))
            detection = predictor.predict([rgb])[0]
            annotated = draw_boxes(rgb, *boxes_scores_labels(detection), [], [], predictor.category_names,
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
