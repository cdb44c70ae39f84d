"""Look before training: the first training batches exactly as the loader yields them, and the
label and anchor-fit plots, written by `detector data` and at the start of `detector train`.

The batches come from the training loader itself (or one built by the same call as the
trainer's), at epoch 0: the first `batches` batches the run trains on, augmentation included.
Taking them leaves the run unchanged: the loader is reset by the trainer's `set_epoch` before
each epoch, the samples it skips are not reported twice, and the global random states (python,
numpy, torch) are put back afterwards.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from detector.config import Config

PREVIEW_BATCHES = 2
PREVIEW_MAX_IMAGES = 2000  # the trainer's plots and anchor fit look at this many images at most


def first_batches(loader, count: int) -> list[tuple[list, list]]:
    """The first `count` batches of epoch 0 of a DetectionLoader, leaving it as it was."""
    from detector.engine.checkpoint import restore_rng_states, rng_states

    states = rng_states()
    skipped_before = len(loader.skipped)
    try:
        loader.set_epoch(0)
        return list(itertools.islice(iter(loader), count))
    finally:
        del loader.skipped[skipped_before:]
        restore_rng_states(states)


def training_loader(config: Config, dataset):
    """A loader built by the same call as the trainer's (one process, rank 0)."""
    from detector.data import build_loader

    return build_loader(dataset, config.train.batch_size, train=True, workers=config.data.workers,
                        seed=config.train.seed, group_aspect_ratio=config.data.group_aspect_ratio,
                        drop_last=config.train.drop_last)


def write_batch_previews(config: Config, dataset, out_dir: str | Path, batches: int = PREVIEW_BATCHES,
                         loader=None) -> list[Path]:
    """train_batch0.jpg, train_batch1.jpg, ...: the first batches with their boxes and class names."""
    from detector.analysis.galleries import draw_batch

    loader = loader if loader is not None else training_loader(config, dataset)
    names = list(dataset.category_map.names)
    return [draw_batch(images, targets, names, Path(out_dir) / f"train_batch{index}.jpg")
            for index, (images, targets) in enumerate(first_batches(loader, batches)) if images]


def write_training_previews(config: Config, train_loader_or_dataset, run_dir: str | Path,
                            max_images: int = PREVIEW_MAX_IMAGES, suggest_anchors: bool = False) -> list[Path]:
    """What `detector train` writes at the start of a run into `run_dir`: train_batch0/1.jpg
    (from the given training loader, or one built like the trainer's from a dataset),
    labels.png, anchor_fit.png and data_report.json for the training split (on at most
    `max_images` images drawn at random, seeded, so a big data set stays quick). The search
    for better anchors is `detector data`'s (`suggest_anchors` runs it here too)."""
    from detector.engine.checkpoint import restore_rng_states, rng_states

    states = rng_states()  # the run trains exactly as it would without its previews
    try:
        return _write_training_previews(config, train_loader_or_dataset, Path(run_dir), max_images, suggest_anchors)
    finally:
        restore_rng_states(states)


def _write_training_previews(config: Config, given, run_dir: Path, max_images: int, suggest_anchors: bool) -> list[Path]:
    from detector.analysis.data_report import data_report
    from detector.analysis.plots import plot_anchor_fit, plot_labels

    is_loader = hasattr(given, "batch_sampler")
    dataset = given.dataset if is_loader else given
    run_dir.mkdir(parents=True, exist_ok=True)
    records = dataset.records
    if len(records) > max_images:
        chosen = np.sort(np.random.default_rng(0).choice(len(records), max_images, replace=False))
        records = [records[i] for i in chosen]
    names = list(dataset.category_map.names)
    report, fit = data_report(config, records, names, suggest=suggest_anchors)
    report["images_looked_at"] = f"{len(records)} of {len(dataset.records)} training images"
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
    written = [run_dir / "data_report.json", plot_labels(fit.boxes, records, names, run_dir / "labels.png"),
               plot_anchor_fit(fit, run_dir / "anchor_fit.png")]
    return written + write_batch_previews(config, dataset, run_dir, loader=given if is_loader else None)
