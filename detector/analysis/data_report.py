"""What a data set looks like to the model, before any training: `detector data CONFIG`.

Per split (train, val): images, boxes and images per class, images without boxes, the
distributions of box width, height, sqrt(area) and aspect ratio (height / width) in the
model's pixels (after the config's resize, before augmentation) and COCO's small / medium /
large counts, both in the original pixels (what COCO's APs / APm / APl count) and in the
model's. Crowd (COCO) and difficult (VOC) boxes are counted apart: they never train. The train
split also gets the anchor fit (anchor_fit.py). Nothing here decodes an image but the batch
previews.

Small objects: when at least SMALL_SHARE (20%) of the training boxes are under SMALL_PIXELS
(16 px, sqrt of the area) at the model's resolution, the report recommends training on tiles and
predicting sliced (`tile_recommendation`): a tile side T (a multiple of 32) such that the median
of those small boxes reaches TARGET_PIXELS (32 px) once the tile is resized to min_size, and an
overlap such that the largest common box (the 95th percentile of the longer box side) fits in
the part two neighbouring tiles share. With data.tiles on, the train split is reported as the
model sees it: its crops (data/tiles.py), boxes in crop pixels, then resized.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from detector.analysis.anchor_fit import AnchorFit, ModelGeometry, anchor_fit, boxes_in_model_pixels, size_class
from detector.choices import MIN_TILE_SIZE
from detector.config import Config
from detector.data.tiles import CropRecord

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
SMALL_PIXELS = 16  # a box under this (sqrt of its area, at the model's resolution) is hard to see
SMALL_SHARE = 0.2  # tiles are recommended when at least this share of the boxes is that small
TARGET_PIXELS = 32  # the median small box should reach this in a resized tile (COCO's "medium")
MAX_OVERLAP = 0.5  # a recommended overlap is capped here: more costs many tiles (objects larger
                   # than the overlap are caught by inference.slice.full_image)


def distribution(values: np.ndarray) -> dict:
    """min, p5, p25, median, p75, p95, max and mean of `values` (None when there are none)."""
    if not len(values):
        return {"count": 0}
    q = np.quantile(values, QUANTILES)
    return {"count": int(len(values)), "min": float(q[0]), "p5": float(q[1]), "p25": float(q[2]),
            "median": float(q[3]), "p75": float(q[4]), "p95": float(q[5]), "max": float(q[6]),
            "mean": float(np.mean(values))}


def split_statistics(records, class_names, geometry: ModelGeometry) -> dict:
    """The statistics of one split's ImageRecords (see the module docstring)."""
    boxes = boxes_in_model_pixels(records, geometry)
    wh = boxes.widths_heights
    model_side = np.sqrt(wh.prod(1))
    per_class = {}
    for label, name in enumerate(class_names, start=1):
        per_class[name] = {"images": int(sum(bool((r.labels[~r.iscrowd] == label).any()) for r in records)),
                           "boxes": int((boxes.labels == label).sum())}
    original = np.concatenate([r.boxes[~r.iscrowd] for r in records] or [np.zeros((0, 4))]).reshape(-1, 4)
    original_area = (original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1])
    return {
        "images": len(records),
        "images_without_boxes": int(sum(not (~r.iscrowd).any() for r in records)),
        "boxes": int(len(boxes.labels)),
        "ignored_boxes": int(sum(r.iscrowd.sum() for r in records)),
        "per_class": per_class,
        "box_size_model_pixels": {
            "width": distribution(wh[:, 0]), "height": distribution(wh[:, 1]),
            "sqrt_area": distribution(np.sqrt(wh.prod(1))), "aspect_ratio_h_over_w": distribution(wh[:, 1] / wh[:, 0]),
        },
        "coco_sizes": {"original_pixels": _size_counts(original_area), "model_pixels": _size_counts(wh.prod(1))},
        f"under_{SMALL_PIXELS}px_model_pixels": {
            "boxes": int((model_side < SMALL_PIXELS).sum()),
            "share": float((model_side < SMALL_PIXELS).mean()) if len(model_side) else None},
    }


def tile_recommendation(records, geometry: ModelGeometry) -> dict | None:
    """A tile size and overlap for data.tiles and inference.slice when at least SMALL_SHARE of
    the boxes of `records` are under SMALL_PIXELS at the model's resolution (module docstring);
    None when they are not."""
    boxes = boxes_in_model_pixels(records, geometry)
    model_side = np.sqrt(boxes.widths_heights.prod(1))
    small = model_side < SMALL_PIXELS
    if not len(small) or small.mean() < SMALL_SHARE:
        return None
    original = np.concatenate([r.boxes[~r.iscrowd] for r in records]).reshape(-1, 4).astype(np.float64)
    original_wh = original[:, 2:] - original[:, :2]
    median_small = float(np.median(np.sqrt(original_wh.prod(1))[small]))
    min_size = geometry.config.model.transform.min_size
    # A square tile of side T is resized by min_size / T: the median small box reaches
    # median_small * min_size / T >= TARGET_PIXELS for T <= median_small * min_size / TARGET_PIXELS.
    size = max(MIN_TILE_SIZE, int(median_small * min_size / TARGET_PIXELS) // 32 * 32)
    common_side = float(np.quantile(original_wh.max(1), 0.95))
    overlap = min(MAX_OVERLAP, max(0.1, math.ceil(common_side / size * 20 - 1e-9) / 20))
    resized = geometry.resized_size(size, size)[0]
    return {
        "share_under": float(small.mean()), "boxes_under": int(small.sum()),
        "median_small_box_original_pixels": median_small,
        "median_small_box_in_tile_pixels": median_small * resized / size,
        "largest_common_box_original_pixels": common_side,
        "size": size, "overlap": overlap,
        "override": (f"data.tiles.size={size} data.tiles.overlap={overlap:g} "
                     f"inference.slice.size={size} inference.slice.overlap={overlap:g}"),
    }


def _size_counts(areas: np.ndarray) -> dict:
    names = size_class(areas)
    return {name: int((names == name).sum()) for name in ("small", "medium", "large")}


def data_report(config: Config, train_records, class_names, val_records=None,
                geometry: ModelGeometry | None = None, suggest: bool = True) -> tuple[dict, AnchorFit]:
    """(data_report.json's content, the anchor fit of the train split, with suggested anchors
    when `suggest`)."""
    geometry = geometry or ModelGeometry(config)
    fit = anchor_fit(config, train_records, class_names, suggest=suggest, geometry=geometry)
    resize = {"min_size": config.model.transform.min_size, "max_size": config.model.transform.max_size}
    report = {"classes": list(class_names), "resize": resize,
              "train": split_statistics(train_records, class_names, geometry)}
    tiles = config.data.tiles
    if tiles.size and any(isinstance(r, CropRecord) for r in train_records):
        report["train"]["view"] = (f"crops of data.tiles ({tiles.size} px, overlap {tiles.overlap:g}) as the model "
                                   "sees them; boxes kept when >= min_visible inside, in crop pixels")
    if val_records is not None:
        report["val"] = split_statistics(val_records, class_names, geometry)
    report["small_objects"] = {"rule": f"tiles are recommended when >= {SMALL_SHARE:.0%} of the training boxes are "
                                       f"under {SMALL_PIXELS} px (sqrt of the area) at the model's resolution",
                               "recommendation": tile_recommendation(train_records, geometry)}
    report["anchor_fit"] = fit.to_json()
    return report, fit


def write_data_report(config: Config, out_dir: str | Path, config_name: str = "config", batches: int = 2) -> dict:
    """`detector data CONFIG`: data_report.json, labels.png, anchor_fit.png and train_batch*.jpg
    (the first `batches` batches of the real training loader) in `out_dir`. Returns the report."""
    from detector.analysis.previews import write_batch_previews
    from detector.analysis.plots import plot_anchor_fit, plot_labels
    from detector.config_checks import check_data_paths
    from detector.data import load_dataset
    from detector.data.tiles import TiledDataset, check_no_shared_images
    from detector.errors import ConfigError

    if config.data.train is None:
        raise ConfigError(f"{config_name}: data.train is not set; `detector data` reports on the training data")
    check_data_paths(config.data)
    train = load_dataset(config.data.train, augment=config.data.augment, policy=config.data.policy, seed=config.train.seed)
    val = load_dataset(config.data.val, train.category_map, policy=config.data.policy) if config.data.val else None
    if config.data.tiles.size:  # the report, the anchor fit and the previews see the training crops
        if val is not None:
            check_no_shared_images(train.records, val.records)
        train = TiledDataset(train, config.data.tiles, seed=config.train.seed)
    names = list(train.category_map.names)
    report, fit = data_report(config, train.records, names, val.records if val is not None else None)
    report["source"] = {"config": config_name, "train": train.summary(), "val": val.summary() if val else None}
    # Images the readers left out (missing, unreadable, ...): `detector data` names them and exits 1.
    report["skipped_images"] = [str(problem) for dataset in (train, val) if dataset is not None
                                for problem in dataset.report.skipped_images]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_labels(fit.boxes, train.records, names, out_dir / "labels.png")
    plot_anchor_fit(fit, out_dir / "anchor_fit.png")
    write_batch_previews(config, train, out_dir, batches=batches)
    return report
