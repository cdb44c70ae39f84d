"""Shared by the export tests: real photos, a small trained-looking checkpoint, and the parity
criterion of the deploy issue (every detection >= 0.05 has a partner with IoU >= 0.99, the same
label and a score within 1e-3, both ways)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from detector import build_model, load_config
from detector.config import config_to_dict
from detector.engine.checkpoint import save_checkpoint

SMALL = ["model.transform.min_size=256", "model.transform.max_size=384", "model.rpn.pre_nms_top_n_test=500",
         "model.rpn.post_nms_top_n_test=300"]
# The synthetic demo set's classes, so `detector eval` can score the test model on it.
CATEGORIES = {"ids": [1, 2, 3, 4], "names": ["circle", "square", "triangle", "cross"]}


def photos() -> list[np.ndarray]:
    """Seven real RGB photos of different sizes (scikit-image's data, installed offline)."""
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
            data.hubble_deep_field(), data.stereo_motorcycle()[0]]


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def make_checkpoint(path: Path, overrides: list[str] = (), seed: int = 0, config=None, no_detection_on_black=True):
    """A checkpoint like `detector train` writes: the model of `config` (default: Lite0 with
    `overrides`) with a pretrained backbone where one is installed, heads drawn at random with
    a fixed seed and a spread that gives scores across 0..1 on real photos. With
    `no_detection_on_black`, the background bias is set so that a black image scores below
    0.045 everywhere (an image with no detection). Returns (path, the eager model in eval mode)."""
    if config is None:
        config = load_config(None, ["model.num_classes=4", *SMALL, *overrides])
    torch.manual_seed(seed)
    model = build_model(config).eval()
    torch.nn.init.normal_(model.rpn.head.cls_logits.weight, std=0.05)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.01)
    for stage in model.roi_heads.refinements:  # Cascade R-CNN stages: boxes that move, scores that differ
        torch.nn.init.normal_(stage.box_predictor.cls_score.weight, std=0.05)
        torch.nn.init.normal_(stage.box_predictor.bbox_pred.weight, std=0.01)
    if no_detection_on_black:
        calibrate_background(model, [torch.zeros(3, 333, 517), torch.zeros(3, 200, 300)], max_score=0.045)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(config), "categories": CATEGORIES}, path)
    return path, model


@torch.no_grad()
def calibrate_background(model, blanks: list[torch.Tensor], max_score: float) -> None:
    """Shift the background logit's bias until no class scores above `max_score` on `blanks`."""
    captured = []
    handle = model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    for blank in blanks:
        model([blank])
    handle.remove()
    logits = torch.cat(captured)
    low, high = -50.0, 50.0
    for _ in range(60):
        shift = (low + high) / 2
        shifted = logits.clone()
        shifted[:, 0] += shift
        if shifted.softmax(-1)[:, 1:].max() > max_score:
            low = shift
        else:
            high = shift
    model.roi_heads.box_predictor.cls_score.bias[0] += high


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def unmatched(ours: dict, theirs: dict, min_score: float = 0.05) -> list[str]:
    """Detections of `ours` scoring >= min_score without a partner in `theirs`: same label,
    IoU >= 0.99, |score difference| <= 1e-3. Each as a line naming box, label and score."""
    boxes, scores, labels = (np.asarray(ours[k], dtype=np.float64) for k in ("boxes", "scores", "labels"))
    other_boxes, other_scores, other_labels = (np.asarray(theirs[k], dtype=np.float64) for k in ("boxes", "scores", "labels"))
    missing = []
    iou = box_iou(boxes, other_boxes) if len(boxes) and len(other_boxes) else np.zeros((len(boxes), len(other_boxes)))
    for i in np.nonzero(scores >= min_score)[0]:
        partner = (other_labels == labels[i]) & (iou[i] >= 0.99) & (np.abs(other_scores - scores[i]) <= 1e-3)
        if not partner.any():
            missing.append(f"box {boxes[i].round(2).tolist()} label {int(labels[i])} score {scores[i]:.4f}")
    return missing


def assert_same_detections(eager: dict, exported: dict, what: str) -> None:
    there, back = unmatched(eager, exported), unmatched(exported, eager)
    assert not there, f"{what}: PyTorch detections without an ONNX partner: {there[:3]} ({len(there)} in all)"
    assert not back, f"{what}: ONNX detections without a PyTorch partner: {back[:3]} ({len(back)} in all)"


def eager_detections(model, image: np.ndarray) -> dict:
    with torch.no_grad():
        output = model([as_tensor(image)])[0]
    return {k: v.numpy() for k, v in output.items()}

