"""Anchor fit: each box's best IoU equals a brute-force IoU with every anchor of the real grid
(our AnchorGenerator on the feature maps of a real backbone forward), the resize equals the
model's, k-means recovers a known grid of shapes, and the printed override loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import detector
from detector.config import AnchorConfig
from detector.analysis.anchor_fit import (ModelGeometry, anchor_fit, anchor_override, best_anchor_ious,
                                          boxes_in_model_pixels, fit_shares, grid_shapes, kmeans_grid)
from detector.data import ImageRecord
from detector.modeling.anchors import AnchorGenerator
from detector.modeling.faster_rcnn import build_model

SMALL = ["model.backbone.pretrained=false", "model.transform.min_size=160", "model.transform.max_size=256"]


def random_records(seed: int, count: int = 6) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        width, height = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, [width - 10, height - 10], (n, 2))
        wh = rng.uniform(4, 150, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1)
        records.append(ImageRecord(index, f"img{index}.jpg", width, height, boxes, rng.integers(1, 3, n),
                                   rng.random(n) < 0.15))
    return records


@pytest.mark.parametrize("config_file", ["configs/demo.yaml", "configs/lite0_fpn.yaml"])
def test_best_iou_equals_brute_force_on_the_real_grid(config_file):
    config = detector.load_config(config_file, SMALL)
    model = build_model(config).eval()
    generator = AnchorGenerator(config.model.anchors.sizes, config.model.anchors.aspect_ratios)
    geometry = ModelGeometry(config)
    records = random_records(0, count=4)
    ours = best_anchor_ious(geometry, config.model.anchors, boxes_in_model_pixels(records, geometry))
    expected = []
    with torch.no_grad():
        for record in records:
            image = torch.zeros(3, record.height, record.width)
            image_list, targets = model.transform([image], [{"boxes": torch.as_tensor(record.boxes[~record.iscrowd]),
                                                              "labels": torch.as_tensor(record.labels[~record.iscrowd])}])
            features = list(model.backbone(image_list.tensors).values())
            anchors = generator(tuple(image_list.tensors.shape[-2:]), features)
            if len(targets[0]["boxes"]):
                expected.append(box_iou(targets[0]["boxes"].double(), anchors.double()).max(dim=1).values.numpy())
    np.testing.assert_allclose(ours, np.concatenate(expected), atol=1e-5)


def test_resized_size_equals_the_model_transform():
    config = detector.load_config("configs/demo.yaml", SMALL)
    model, geometry = build_model(config), ModelGeometry(config)
    for height, width in [(120, 400), (333, 217), (256, 256), (97, 1000), (481, 479)]:
        assert geometry.resized_size(height, width) == tuple(model.transform.resize(torch.zeros(3, height, width)).shape[-2:])


def test_shares_overall_and_per_class():
    best = np.array([0.9, 0.7, 0.69, 0.3, 0.29, 0.0])
    assert fit_shares(best, 0.7, 0.3) == {"iou>=0.7": 2 / 6, "0.3<=iou<0.7": 2 / 6, "iou<0.3": 2 / 6, "boxes": 6,
                                          "mean_best_iou": pytest.approx(best.mean())}
    config = detector.load_config("configs/demo.yaml", SMALL)
    records = random_records(1, count=10)
    fit = anchor_fit(config, records, ["a", "b"], suggest=False)
    report = fit.to_json()
    labels = np.concatenate([r.labels[~r.iscrowd] for r in records])
    for label, name in [(1, "a"), (2, "b")]:
        mine = fit.best_iou[labels == label]
        assert report["per_class"][name]["boxes"] == len(mine)
        assert report["per_class"][name]["iou>=0.7"] == pytest.approx((mine >= 0.7).mean())
    assert sum(report["per_size"][s]["boxes"] for s in ("small", "medium", "large")) == len(labels)


def test_kmeans_recovers_a_grid_of_shapes():
    sizes, ratios = np.array([20.0, 50.0, 120.0]), np.array([0.5, 1.0, 2.0])
    shapes = np.repeat(grid_shapes(sizes, ratios), 30, axis=0)
    jitter = np.random.default_rng(0).uniform(0.97, 1.03, shapes.shape)
    found_sizes, found_ratios = kmeans_grid(shapes * jitter, 3, 3)
    np.testing.assert_allclose(found_sizes, sizes, rtol=0.05)
    np.testing.assert_allclose(found_ratios, ratios, rtol=0.07)


@pytest.mark.parametrize("config_file", ["configs/demo.yaml", "configs/lite0_fpn.yaml"])
def test_suggestion_loads_as_an_override_and_fits_no_worse(config_file):
    config = detector.load_config(config_file, SMALL)
    fit = anchor_fit(config, random_records(2, count=12), ["a", "b"])
    override = anchor_override(fit.suggested)
    loaded = detector.load_config(config_file, override.split())
    assert loaded.model.anchors.sizes == fit.suggested.sizes
    assert loaded.model.anchors.aspect_ratios == fit.suggested.aspect_ratios
    # The config's structure: as many sizes per map, the same number of ratios on every map.
    assert [len(s) for s in fit.suggested.sizes] == [len(s) for s in config.model.anchors.sizes]
    assert [len(r) for r in fit.suggested.aspect_ratios] == [len(r) for r in config.model.anchors.aspect_ratios]
    score = lambda best: (best >= 0.7).mean() - (best < 0.3).mean()  # noqa: E731 - the search's objective
    assert score(fit.suggested_best_iou) >= score(fit.best_iou)


def test_refined_anchors_are_a_local_optimum_of_the_search():
    """No single step of the search (one size or ratio times a step factor) improves its result."""
    from detector.analysis.anchor_fit import SEARCH_STEPS, _anchor_config, _objective, refine_on_grid

    config = detector.load_config("configs/demo.yaml", SMALL)
    geometry = ModelGeometry(config)
    boxes = boxes_in_model_pixels(random_records(3, count=12), geometry)
    start = AnchorConfig(sizes=[[20.0, 40.0, 200.0]], aspect_ratios=[[0.3, 1.0, 3.0]])
    refined = refine_on_grid(geometry, boxes, start)
    best = _objective(geometry, refined, boxes)
    assert best > _objective(geometry, start, boxes)
    sizes, ratios = refined.sizes[0], refined.aspect_ratios[0]
    for kind, count in (("size", len(sizes)), ("ratio", len(ratios))):
        for index in range(count):
            for factor in SEARCH_STEPS:
                s, r = list(sizes), list(ratios)
                (s if kind == "size" else r)[index] *= factor
                assert _objective(geometry, _anchor_config(s, r, [3]), boxes) <= best
