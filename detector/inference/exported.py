"""The predictor of a file written by `detector export`, run by ONNX Runtime (CPU provider) or OpenVINO.

`OnnxPredictor(path).predict(images)` returns what the eager `Predictor.predict` returns (boxes,
scores, labels, category_ids, names per image), and `.model` answers the eager model's call
contract (list of [3, H, W] tensors in 0..1 -> [{"boxes", "labels", "scores"}]), so `detector
eval` scores an exported file with the same code as a checkpoint. The graph takes a batch of one
size: images of equal size that follow each other share a run, others run apart.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detector.choices import BACKENDS, PRECISIONS
from detector.dependencies import require
from detector.data.records import CategoryMap
from detector.errors import CheckpointError, DataError, ExportError
from detector.inference.categories import with_categories
from detector.modeling.geometry import check_resizable

# The metadata an exported file must carry to be run (export/onnx.py writes them all).
REQUIRED_METADATA = ("category_ids", "category_names", "score_thresh", "detections_per_img", "min_size", "max_size")


class OnnxRuntimeRunner:
    """images [B, 3, H, W] float32 -> the four outputs, with ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int | None = None):
        ort = require("onnxruntime", "export", f"Running {path.name}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's business
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own exception types, all with one message
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it: {' '.join(str(error).split())[:300]}") from None
        self.precision = "f32"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"images": images})


class OpenVinoRunner:
    """The same file compiled by OpenVINO for the CPU, at `precision` (f32 unless asked)."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ExportError(f"OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        ov = require("openvino", "openvino", f"Running {path.name} in OpenVINO")
        onnx = require("onnx", "export", f"Reading the metadata of {path.name}")
        core = ov.Core()
        # OpenVINO picks bf16 on CPUs with AVX512_BF16 or AMX unless told otherwise, and then no longer
        # gives the checkpoint's detections; f32 is the default here, bf16 a choice (tools/bench_export.py).
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        # What OpenVINO really runs at (it may refuse a hint the CPU cannot honour).
        self.precision = self.model.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16"
        self.metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        results = self.model(images)
        return [np.asarray(results[output]) for output in self.model.outputs]


class OnnxPredictor:
    """A `.onnx` written by `detector export`, as a Predictor: `predict(list of RGB uint8 [H, W, 3])`.

    The test-time settings are part of the exported graph; `score_thresh` can only raise the
    graph's threshold (detections scoring at most it are dropped from the outputs) and
    `max_detections` only lower its detections_per_img. To change anything else, export again
    with `detector export --set KEY=VALUE`."""

    def __init__(self, path: str | Path, score_thresh: float | None = None, max_detections: int | None = None,
                 overrides: Sequence[str] = (), backend: str = "onnxruntime", threads: int | None = None,
                 precision: str = "f32"):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file not found: {path}")
        if overrides:
            raise ExportError(f"{path}: test-time settings ({', '.join(overrides)}) are fixed inside an exported "
                              "file; export again with `detector export --weights CHECKPOINT --set KEY=VALUE`")
        if backend not in BACKENDS:
            raise ExportError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "onnxruntime":
            if precision != "f32":
                raise ExportError(f"precision {precision}: ONNX Runtime runs the file in f32; bf16 is an OpenVINO "
                                  "option (--backend openvino)")
            self.runner = OnnxRuntimeRunner(path, threads)
        else:
            self.runner = OpenVinoRunner(path, threads, precision)
        meta = read_metadata(self.runner.metadata, path)
        self.path = path
        self.backend = backend
        self.category_ids, self.category_names = meta["category_ids"], meta["category_names"]
        self.min_size, self.max_size = meta["min_size"], meta["max_size"]
        self.metadata = self.runner.metadata
        self.saved_config = meta["config"]  # the config of the exported checkpoint ({} in older files)
        graph_thresh, graph_max = meta["score_thresh"], meta["detections_per_img"]
        if score_thresh is not None and score_thresh < graph_thresh:
            raise ExportError(f"score threshold {score_thresh}: {path} was exported with "
                              f"model.roi_heads.score_thresh={graph_thresh}; export again with a lower one")
        if max_detections is not None and max_detections > graph_max:
            raise ExportError(f"max detections {max_detections}: {path} was exported with "
                              f"model.roi_heads.detections_per_img={graph_max}; export again with more")
        self.score_thresh = score_thresh
        self.max_detections = max_detections if max_detections is not None else graph_max
        self.device = torch.device("cpu")
        self.model = ExportedModel(self)

    def check_size(self, height: int, width: int, name: str) -> None:
        """DegenerateImageError naming `name` when an image of height x width would resize below
        one pixel on a side with the file's resize (its metadata min_size / max_size)."""
        check_resizable(height, width, self.min_size, self.max_size, name)

    def run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(boxes, scores, labels) of each image of a float32 [B, 3, H, W] batch in 0..1."""
        boxes, scores, labels, counts = self.runner(np.ascontiguousarray(batch, dtype=np.float32))
        results = []
        for image_boxes, image_scores, image_labels, count in zip(boxes, scores, labels, counts):
            keep = slice(0, min(int(count), self.max_detections))
            image_boxes, image_scores, image_labels = image_boxes[keep], image_scores[keep], image_labels[keep]
            if self.score_thresh is not None:
                above = image_scores > self.score_thresh
                image_boxes, image_scores, image_labels = image_boxes[above], image_scores[above], image_labels[above]
            results.append((image_boxes, image_scores, image_labels.astype(np.int64)))
        return results

    def run_images(self, images: Sequence[np.ndarray], batch_size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`run` over float32 [3, H, W] arrays: neighbours of equal size share a batch of <= batch_size.
        An image that would resize below one pixel a side is a DegenerateImageError naming
        `image <index>`, before anything runs (as the eager model)."""
        for index, image in enumerate(images):
            self.check_size(int(image.shape[-2]), int(image.shape[-1]), f"image {index}")
        results, start = [], 0
        while start < len(images):
            end = start + 1
            while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
                end += 1
            results += self.run(np.stack(images[start:end]))
            start = end
        return results

    def predict(self, images: list[np.ndarray], batch_size: int = 4) -> list[dict]:
        """Detections for RGB uint8 arrays [H, W, 3], as `Predictor.predict`."""
        arrays = [np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1), dtype=np.float32) / 255 for image in images]
        return [with_categories(boxes, scores, labels, self.category_ids, self.category_names)
                for boxes, scores, labels in self.run_images(arrays, batch_size)]


def read_metadata(metadata: dict[str, str], path: Path) -> dict:
    """The values `detector export` wrote into the file, checked: a missing or malformed one is
    a CheckpointError naming the file and the key, not a crash at the first image."""
    values = {}
    for key in REQUIRED_METADATA:
        if key not in metadata:
            raise CheckpointError(f"{path}: no {key!r} in its metadata; use a file written by `detector export`")
        try:
            values[key] = json.loads(metadata[key])
        except ValueError:
            raise CheckpointError(f"{path}: metadata {key!r} is not JSON: {metadata[key][:80]!r}") from None
    numbers = {"score_thresh": float, "detections_per_img": int, "min_size": int, "max_size": int}
    for key, kind in numbers.items():
        if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
            raise CheckpointError(f"{path}: metadata {key!r} must be a number, got {values[key]!r}")
        values[key] = kind(values[key])
    ids, names = values["category_ids"], values["category_names"]
    if (not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            or not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: metadata category_ids must be a list of integers and category_names a "
                              f"list of strings, got {ids!r} and {names!r}")
    try:
        CategoryMap(tuple(ids), tuple(names))  # one name per id, no id twice
    except DataError as error:
        raise CheckpointError(f"{path}: metadata {error}") from None
    try:
        config = json.loads(metadata.get("config", "{}"))
        classes = config.get("model", {}).get("num_classes")
    except (ValueError, AttributeError):  # not JSON, or JSON but not a mapping of sections
        raise CheckpointError(f"{path}: metadata 'config' is not the JSON config `detector export` writes") from None
    values["config"] = config
    if classes is not None and classes != len(ids):
        raise CheckpointError(f"{path}: the graph predicts {classes} classes but its metadata maps {len(ids)} "
                              "(labels beyond the mapping would have no category)")
    return values


class ExportedModel:
    """The eager model's inference contract on an exported file: `model(list of [3, H, W] tensors
    in 0..1) -> [{"boxes", "labels", "scores"}]` (engine/evaluation.py calls it so)."""

    def __init__(self, predictor: OnnxPredictor):
        self.predictor = predictor

    def eval(self) -> "ExportedModel":
        return self

    def __call__(self, images: list[torch.Tensor], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        arrays = [image.detach().cpu().float().numpy() for image in images]
        return [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}
                for boxes, scores, labels in self.predictor.run_images(arrays, batch_size)]
