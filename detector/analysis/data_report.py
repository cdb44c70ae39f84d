"""What a data set looks like to the model, before any training: `detector data CONFIG`.

Per split (train, val): images, boxes and images per class, images without boxes, the
distributions of box width, height, sqrt(area) and aspect ratio (height / width) in the
model's pixels (after the config's resize, before augmentation) and COCO's small / medium /
large counts, both in the original pixels (what COCO's APs / APm / APl count) and in the
model's. Crowd (COCO) and difficult (VOC) boxes are counted apart: they never train. The train
split also gets the anchor fit (anchor_fit.py). Nothing here decodes an image but the batch
previews.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detector.analysis.anchor_fit import AnchorFit, ModelGeometry, anchor_fit, boxes_in_model_pixels, size_class
from detector.config import Config

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


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
    if val_records is not None:
        report["val"] = split_statistics(val_records, class_names, geometry)
    report["anchor_fit"] = fit.to_json()
    return report, fit


def write_data_report(config: Config, out_dir: str | Path, config_name: str = "config", batches: int = 2) -> dict:
    """`detector data CONFIG`: data_report.json, labels.png, anchor_fit.png and train_batch*.jpg
    (the first `batches` batches of the real training loader) in `out_dir`. Returns the report."""
    from detector.analysis.previews import write_batch_previews
    from detector.analysis.plots import plot_anchor_fit, plot_labels
    from detector.config_checks import check_data_paths
    from detector.data import load_dataset
    from detector.errors import ConfigError

    if config.data.train is None:
        raise ConfigError(f"{config_name}: data.train is not set; `detector data` reports on the training data")
    check_data_paths(config.data)
    train = load_dataset(config.data.train, augment=config.data.augment, policy=config.data.policy, seed=config.train.seed)
    val = load_dataset(config.data.val, train.category_map, policy=config.data.policy) if config.data.val else None
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
