"""Test-time augmentation (TTA): each image predicted in several views, the views' boxes mapped
back to the image and merged by the one merge of sliced prediction (inference/merging.py).

Views: one per scale in `scales`, a min_size of the model's resize (its max_size scaled alike,
so that a wide image is not capped back to the native size), each also mirrored with `hflip`.
No scales: the model's own min_size. A mirrored view's box x1..x2 is the image's W-x2..W-x1,
exactly; a resized view's boxes come back in image pixels from the model itself.

The merge: views are the sources. Unlike tiles, every view sees the whole image, so no box is
cut, and one object's boxes from two views agree closely: they are matched on IoU (above
`match_threshold`, 0.55 as weighted box fusion), not on IoS, which would fuse a small object
with a larger one of its class around it. The fused box is the score-weighted mean of the
group's, and its score the group's sum over the number of views (a view that missed the object
counts 0): what all views agree on ranks above what one saw. The model's score threshold then
applies to that score, as it did to each view's.

`TtaPredictor` wraps any predictor (eager, ONNX Runtime, OpenVINO, sliced or not), as
`SlicedPredictor` does; a sliced predictor is sliced in every view (TTA outside, tiles inside).
An exported file resizes inside its graph to the min_size it was exported with: there, scales
other than that one are refused in one line.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detector.config_checks import check_section
from detector.config import settings_from_section
from detector.errors import ConfigError
from detector.inference.categories import with_categories
from detector.inference.merging import merge_detections
from detector.inference.slicing import SlicedModel, SlicedPredictor
from detector.modeling.geometry import check_resizable

TTA_KEY = "inference.tta"


@dataclass(frozen=True)
class TtaSettings:
    """Which views to predict (config `inference.tta.*`, option --tta [SCALES|off])."""

    hflip: bool = False
    scales: tuple[int, ...] = ()
    match_threshold: float = 0.55

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(self.scales))
        check_section(self, TTA_KEY)  # the config's own rules (config_checks.py), one line naming the key

    @property
    def enabled(self) -> bool:
        """Whether images are predicted with TTA: the mirror, or any scale."""
        return self.hflip or bool(self.scales)

    @classmethod
    def from_config(cls, section: Any, **changes) -> "TtaSettings":
        """Settings of a config's `inference.tta` (the dataclass or its dict; keys it lacks keep
        their defaults, as in a checkpoint older than TTA), with `changes` applied."""
        return settings_from_section(cls, section, changes)

    def describe(self) -> str:
        """One line for the log: the views and the merge threshold."""
        scales = ", ".join(str(s) for s in self.scales) or "the model's own"
        return (f"test-time augmentation: min_size {scales}" + (", each also mirrored" if self.hflip else "")
                + f"; views merged above IoU {self.match_threshold:g}")


@dataclass(frozen=True)
class View:
    """One view of an image: the resize it runs at, and whether it is mirrored."""

    min_size: int
    max_size: int
    mirrored: bool


def native_resize(predictor) -> tuple[int, int]:
    """(min_size, max_size) an unsliced predictor resizes to: the eager model's transform, or
    the metadata of an exported file."""
    transform = getattr(predictor.model, "transform", None)
    if transform is not None:
        return transform.min_size, transform.max_size
    return predictor.min_size, predictor.max_size


def views_of(settings: TtaSettings, native: tuple[int, int]) -> list[View]:
    """The views of `settings` for a model resizing to `native` (min_size, max_size)."""
    min_size, max_size = native
    sizes = [(scale, max(scale, round(max_size * scale / min_size))) for scale in settings.scales] or [native]
    mirrors = (False, True) if settings.hflip else (False,)
    return [View(low, high, mirrored) for low, high in sizes for mirrored in mirrors]


def resized_model(model, min_size: int, max_size: int):
    """The eager model resizing to min_size / max_size: a shallow copy with its own transform,
    the same weights; the predictor's model is left as it is (a server may share it)."""
    resized = copy.copy(model)
    resized._modules = dict(model._modules)  # copy.copy shares the submodule dict: the new transform must not leak back
    transform = copy.copy(model.transform)
    transform.min_size, transform.max_size = min_size, max_size
    resized.transform = transform
    return resized


def score_threshold(predictor) -> float:
    """The score a detection must exceed to be kept (the model's, or what a .onnx was told)."""
    roi_heads = getattr(predictor.model, "roi_heads", None)
    if roi_heads is not None:
        return float(roi_heads.score_thresh)
    graph = float(json.loads(predictor.metadata["score_thresh"]))
    return max(graph, predictor.score_thresh) if predictor.score_thresh is not None else graph


def mirrored_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes of the mirrored image in the image's pixels (and back): x1, x2 = W - x2, W - x1."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class TtaModel:
    """The model's inference call contract with TTA: `model(list of [3, H, W] tensors in 0..1)`
    -> one {"boxes", "labels", "scores"} per image, the views merged."""

    def __init__(self, views: list[tuple[View, Any]], settings: TtaSettings, score_thresh: float):
        self.views = views  # (view, the model that predicts it)
        self.settings = settings
        self.score_thresh = score_thresh

    def eval(self) -> "TtaModel":
        """Every view's model in inference mode, as the evaluator asks of any model."""
        for _, model in self.views:
            model.eval()
        return self

    @torch.no_grad()
    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        widths = [int(image.shape[-1]) for image in images]
        mirrored = [image.flip(-1) for image in images] if self.settings.hflip else []
        # The views one model predicts (an image and its mirror) go in one call: one batch each.
        by_model: dict[int, list[int]] = {}
        for index, (_, model) in enumerate(self.views):
            by_model.setdefault(id(model), []).append(index)
        per_view: list[list[dict[str, Tensor]]] = [[] for _ in self.views]
        for indices in by_model.values():
            model = self.views[indices[0]][1]
            outputs = model([image for i in indices for image in (mirrored if self.views[i][0].mirrored else images)])
            for position, i in enumerate(indices):
                per_view[i] = outputs[position * len(images):(position + 1) * len(images)]
                if self.views[i][0].mirrored:
                    per_view[i] = [{**output, "boxes": mirrored_boxes(output["boxes"], width)}
                                   for output, width in zip(per_view[i], widths)]
        return [self.merge_views([view_outputs[index] for view_outputs in per_view]) for index in range(len(images))]

    def merge_views(self, outputs: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """One image's detections from its views' (in the image's pixels), merged."""
        sources = [torch.full_like(output["labels"], view) for view, output in enumerate(outputs)]
        boxes, scores, labels = merge_detections(
            torch.cat([o["boxes"] for o in outputs]), torch.cat([o["scores"] for o in outputs]),
            torch.cat([o["labels"] for o in outputs]), torch.cat(sources), None, self.settings.match_threshold,
            overlap="iou", views=len(outputs))
        keep = scores > self.score_thresh
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class TtaPredictor:
    """A predictor (eager or exported, sliced or not) predicting with TTA: `predict`,
    `check_size`, `category_ids`, `category_names`, `device` and `model` as every predictor."""

    def __init__(self, predictor, settings: TtaSettings):
        self.predictor = predictor
        self.tta = settings
        sliced = isinstance(predictor, SlicedPredictor)
        self.slicing = predictor.settings if sliced else None
        unsliced = predictor.predictor if sliced else predictor
        native = native_resize(unsliced)
        self.views = views_of(settings, native)
        eager = hasattr(unsliced.model, "transform")
        foreign = sorted({view.min_size for view in self.views} - {native[0]})
        if foreign and not eager:
            raise ConfigError(f"{TTA_KEY}.scales {list(settings.scales)}: {getattr(unsliced, 'path', 'the file')} "
                              f"resizes to min_size {native[0]} inside its graph; TTA at other sizes needs the "
                              "checkpoint (.pt), else --tta (the mirror alone) or --tta off")
        models = {}
        for view in self.views:
            size = (view.min_size, view.max_size)
            if size not in models:
                model = unsliced.model if size == native else resized_model(unsliced.model, *size)
                models[size] = SlicedModel(model, self.slicing) if sliced else model
        self.model = TtaModel([(view, models[(view.min_size, view.max_size)]) for view in self.views], settings,
                              score_threshold(unsliced))
        self.category_ids, self.category_names = predictor.category_ids, predictor.category_names
        self.device = predictor.device

    def __getattr__(self, name: str):  # what else the wrapped predictor tells (settings of slicing, backend, path, ...)
        if name == "predictor":
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def check_size(self, height: int, width: int, name: str) -> None:
        """DegenerateImageError naming `name` when an image (or, sliced, a tile of it) would
        resize below one pixel a side in any view."""
        self.predictor.check_size(height, width, name)
        sizes = [(height, width)]
        if self.slicing is not None:
            sizes = [(min(height, self.slicing.size), min(width, self.slicing.size))] + (
                sizes if self.slicing.full_image else [])
        for view in self.views:
            for view_height, view_width in sizes:
                check_resizable(view_height, view_width, view.min_size, view.max_size, name)

    def predict(self, images: list[np.ndarray], batch_size: int = 4) -> list[dict]:
        """Detections for RGB uint8 arrays [H, W, 3], as every predictor's `predict`."""
        results = []
        for start in range(0, len(images), batch_size):
            tensors = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(self.device)
                       for image in images[start:start + batch_size]]
            for index, tensor in enumerate(tensors):
                self.check_size(int(tensor.shape[-2]), int(tensor.shape[-1]), f"image {start + index}")
            results += [with_categories(output["boxes"].cpu().numpy(), output["scores"].cpu().numpy(),
                                        output["labels"].cpu().numpy(), self.category_ids, self.category_names)
                        for output in self.model(tensors)]
        return results
