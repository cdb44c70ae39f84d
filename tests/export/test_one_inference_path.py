"""One inference path: an image's detections do not depend on the batch it comes in, nor on the
backend that runs it (eager PyTorch, ONNX Runtime, OpenVINO).

A property test over random image sizes (1 px on a side up to 1:50 aspect ratios), batch sizes
1-7, a single-map model with NMS and an FPN model with Soft-NMS: every image's detections alone
in eager PyTorch are the reference, and every other way of asking must give the same labels,
box IoU >= 0.999 and scores within 1e-4. A detection scoring within 1e-4 of a threshold (the
score threshold, or the last score kept at detections_per_img) may appear on one side only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.export.onnx import export_onnx
from detector.inference.exported import OnnxPredictor
from export_helpers import as_tensor, box_iou, make_checkpoint, photos, resized

SCORE_TOLERANCE = 1e-4
IOU_FLOOR = 0.999


@pytest.fixture(scope="module")
def fpn_soft_nms(tmp_path_factory):
    """An FPN model with Gaussian Soft-NMS, exported: (eager model, onnx path)."""
    root = tmp_path_factory.mktemp("fpn_soft_nms")
    checkpoint, model = make_checkpoint(root / "fpn.pt", [
        "model.backbone.fpn=true", "model.anchors.sizes=[[32],[64],[128],[256]]",
        "model.anchors.aspect_ratios=[[0.5,1.0,2.0],[0.5,1.0,2.0],[0.5,1.0,2.0],[0.5,1.0,2.0]]",
        "model.roi_heads.nms_method=gaussian", "model.roi_heads.detections_per_img=30"])
    return model, export_onnx(checkpoint, root / "fpn.onnx", example_batch=2)


def random_sizes(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Image sizes from 1 px on a side to 1:50, some of them repeated (so backends batch them)."""
    sizes = []
    for _ in range(count):
        if sizes and rng.random() < 0.4:
            sizes.append(sizes[rng.integers(len(sizes))])
            continue
        short = int(rng.choice([1, 2, 7, 20, 33, 65, 120, 256, 300]))
        aspect = float(np.exp(rng.uniform(0, np.log(50))))
        long = max(short, min(int(short * aspect), 900))
        sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    return sizes


def case_images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = photos()
    sizes = random_sizes(rng, int(rng.integers(1, 8)))
    return [resized(pool[rng.integers(len(pool))], size) for size in sizes]


def as_numpy(detection: dict) -> dict:
    return {key: np.asarray(detection[key].numpy() if isinstance(detection[key], torch.Tensor) else detection[key],
                            dtype=np.float64) for key in ("boxes", "scores", "labels")}


def disagreements(reference: dict, other: dict, score_thresh: float, limit: int) -> list[str]:
    """Detections of either side without a partner on the other (same label, IoU >= 0.999,
    |score difference| <= 1e-4), leaving out those within 1e-4 of a threshold: the score
    threshold, and the last score kept when a side is full (limit detections)."""
    problems = []
    for name, ours, theirs in (("reference", reference, other), ("other", other, reference)):
        edges = [score_thresh] + ([ours["scores"].min(), theirs["scores"].min()] if
                                  len(ours["scores"]) >= limit or len(theirs["scores"]) >= limit else [])
        iou = (box_iou(ours["boxes"], theirs["boxes"]) if len(ours["boxes"]) and len(theirs["boxes"])
               else np.zeros((len(ours["boxes"]), len(theirs["boxes"]))))
        for i, score in enumerate(ours["scores"]):
            if min(abs(score - edge) for edge in edges if np.isfinite(edge)) <= SCORE_TOLERANCE:
                continue
            partner = ((theirs["labels"] == ours["labels"][i]) & (iou[i] >= IOU_FLOOR)
                       & (np.abs(theirs["scores"] - score) <= SCORE_TOLERANCE))
            if not partner.any():
                problems.append(f"{name} box {ours['boxes'][i].round(2).tolist()} label {int(ours['labels'][i])} "
                                f"score {score:.5f} has no partner")
    return problems


def check_case(model, onnx_path, seed: int, backends: list[str]) -> None:
    images = case_images(seed)
    sizes = [image.shape[:2] for image in images]
    roi = model.roi_heads
    with torch.no_grad():
        alone = [as_numpy(model([as_tensor(image)])[0]) for image in images]
        together = [as_numpy(d) for d in model([as_tensor(image) for image in images])]
    asked = {"eager batch": together}
    for backend in backends:
        predictor = OnnxPredictor(onnx_path, backend=backend)
        asked[f"{backend} batch"] = [as_numpy(d) for d in predictor.predict(images, batch_size=len(images))]
    assert sum(len(d["scores"]) for d in alone) > 0 or min(min(s) for s in sizes) < 8, "no detections to compare"
    for how, results in asked.items():
        for index, (reference, other) in enumerate(zip(alone, results)):
            problems = disagreements(reference, other, roi.score_thresh, roi.detections_per_img)
            assert not problems, (f"seed {seed}, sizes {sizes}: image {index} alone (eager) vs {how}: "
                                  f"{problems[:3]} ({len(problems)} in all)")


def backends() -> list[str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["onnxruntime"]
    return ["onnxruntime", "openvino"]


@pytest.mark.parametrize("seed", range(4))
def test_single_map_nms_model_agrees_at_any_batch_and_size(lite0, seed):
    _, onnx_path, _, model = lite0
    check_case(model, onnx_path, seed, backends())


@pytest.mark.parametrize("seed", range(4, 7))
def test_fpn_soft_nms_model_agrees_at_any_batch_and_size(fpn_soft_nms, seed):
    model, onnx_path = fpn_soft_nms
    check_case(model, onnx_path, seed, backends())


def test_an_image_alone_and_beside_a_taller_one_gets_the_same_detections(lite0):
    """The issue's case: chelsea alone, and in a batch with a taller photo (padded to it before)."""
    _, _, _, model = lite0
    chelsea, tall = photos()[1], resized(photos()[0], (700, 300))
    with torch.no_grad():
        alone = as_numpy(model([as_tensor(chelsea)])[0])
        beside = as_numpy(model([as_tensor(tall), as_tensor(chelsea)])[1])
    assert len(alone["scores"]) >= 10
    assert not disagreements(alone, beside, model.roi_heads.score_thresh, model.roi_heads.detections_per_img)


@pytest.mark.parametrize("height", [20, 40, 66])
def test_wide_images_a_few_cells_high_pool_at_the_true_scale(lite0, height):
    """Eager pooled at twice the scale on resized heights <= 22, 33-45 or 65-67 px (a scale
    guessed from the image height); the export always used 1 / stride."""
    _, _, predictor, model = lite0
    image = resized(photos()[2], (height, 380))
    with torch.no_grad():
        eager = as_numpy(model([as_tensor(image)])[0])
    exported = as_numpy(predictor.predict([image])[0])
    assert not disagreements(eager, exported, model.roi_heads.score_thresh, model.roi_heads.detections_per_img)
