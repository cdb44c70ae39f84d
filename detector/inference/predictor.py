"""The eager predictor: a checkpoint of `detector train` run by PyTorch. Images in, detections
with the dataset's own category ids and names out, whatever the sizes (the model groups them)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detector.config import config_from_dict
from detector.data.records import CategoryMap
from detector.engine import allocator
from detector.engine.checkpoint import load_checkpoint, one_line
from detector.engine.distributed import resolve_device
from detector.errors import CheckpointError, DataError
from detector.inference.categories import with_categories
from detector.inference.overrides import apply_test_time_overrides
from detector.modeling.compilation import compile_model
from detector.modeling.faster_rcnn import build_model
from detector.modeling.geometry import check_resizable


class Predictor:
    """Runs a trained model on images: `predict(list of H,W,3 uint8 RGB arrays)` returns one
    {"boxes", "labels", "scores"} per image, in pixels of that image, batched whatever the sizes.

    `Predictor.from_checkpoint(path)` builds the model from a checkpoint `detector train`
    wrote, with its class mapping: `category_ids` / `category_names` turn the labels 1..K back
    into the dataset's own ids and names.
    """

    def __init__(self, model, category_ids: list[int], category_names: list[str], device: torch.device,
                 channels_last: bool = True, compile: bool = False, keep_freed_memory: bool = True):
        if keep_freed_memory and device.type == "cpu":
            allocator.keep_freed_memory()  # no pages faulted afresh for every image (engine/allocator.py)
        memory_format = torch.channels_last if channels_last else torch.preserve_format  # NHWC: faster convolutions
        self.model = model.to(device, memory_format=memory_format).eval()
        if compile:
            compile_model(self.model, key="--compile")
        self.category_ids = list(category_ids)
        self.category_names = list(category_names)
        self.device = device
        self.saved_config: dict = {}  # the config the model was built from (from_checkpoint: the checkpoint's)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", score_thresh: float | None = None,
        max_detections: int | None = None, overrides: Sequence[str] = (), compile: bool = False,
    ) -> "Predictor":
        """The model of checkpoint `path`, built from the config saved in it. `overrides`
        ("model.roi_heads.nms_method=gaussian", ...) change test-time settings
        (inference/overrides.py: TEST_TIME_KEYS)."""
        state = load_checkpoint(path)
        if "config" not in state or "categories" not in state:
            raise CheckpointError(f"{path}: holds no config or class mapping; use a checkpoint written by `detector train`")
        try:
            categories = CategoryMap.from_dict(state["categories"])
        except DataError as error:
            raise CheckpointError(f"{path}: {error}") from None
        saved = apply_test_time_overrides(state["config"], overrides, path)
        config = config_from_dict(saved, source=f"{path} with {' '.join(overrides)}" if overrides else str(path))
        config.model.backbone.pretrained = False  # every weight comes from the checkpoint
        if score_thresh is not None:
            config.model.roi_heads.score_thresh = score_thresh
        if max_detections is not None:
            config.model.roi_heads.detections_per_img = max_detections
        model = build_model(config)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as error:  # torch lists every mismatch, one per line
            details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            raise CheckpointError(f"{path}: its weights do not fit the model its config builds: "
                                  f"{details[0] if details else one_line(str(error))}{more}") from None
        predictor = cls(model, categories.ids, categories.names, resolve_device(device), config.train.channels_last,
                        compile, config.train.keep_freed_memory)
        predictor.saved_config = saved
        return predictor

    def check_size(self, height: int, width: int, name: str) -> None:
        """DegenerateImageError naming `name` when an image of height x width would resize below
        one pixel on a side with this model's resize (model.transform.min_size / max_size)."""
        check_resizable(height, width, self.model.transform.min_size, self.model.transform.max_size, name)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], batch_size: int = 4) -> list[dict]:
        """Detections for RGB uint8 arrays [H, W, 3]: boxes xyxy in pixels, scores, labels (1..K),
        category_ids (the dataset's) and names."""
        results = []
        for start in range(0, len(images), batch_size):
            batch = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255).to(self.device)
                     for img in images[start:start + batch_size]]
            for output in self.model(batch):
                results.append(with_categories(output["boxes"].cpu().numpy(), output["scores"].cpu().numpy(),
                                               output["labels"].cpu().numpy(), self.category_ids, self.category_names))
        return results
