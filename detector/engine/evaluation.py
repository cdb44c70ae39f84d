"""Run a model over a dataset and score it with COCO mAP; draw a few images for the run folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detector.data import build_loader
from detector.data.dataset import SkippedSample
from detector.engine import distributed
from detector.engine.evaluator import evaluate
from detector.engine.plots import draw_detections, plot_pr_curves
from detector.errors import DegenerateImageError


@torch.no_grad()
def predict_dataset(model, dataset, device: torch.device, batch_size: int = 2, workers: int = 0
                    ) -> tuple[list[dict | None], list]:
    """(detections for every record of `dataset`, in record order, in original image pixels,
    the SkippedSamples whose image could not be decoded or is too thin for the model's resize,
    e.g. 1 x 2000 px: their detections are None).

    With several processes each predicts its share of the batches and rank 0 gathers them all
    (the others get None). The batches are the single-process ones (images [k*B, (k+1)*B)),
    dealt out by rank: every image is predicted once, padded with the same neighbours, so the
    detections equal a single-process run's."""
    model.eval()
    batches = [list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)]
    mine = [i for batch in batches[distributed.rank()::distributed.world_size()] for i in batch]
    subset = dataset if len(mine) == len(dataset) else torch.utils.data.Subset(dataset, mine)
    loader = build_loader(subset, batch_size, train=False, workers=workers, seed=0, group_aspect_ratio=False, drop_last=False)
    predictions: dict[int, dict] = {}
    refused: list[SkippedSample] = []
    for images, targets in loader:
        if not images:
            continue
        for target, output in zip(targets, run_model(model, [image.to(device) for image in images], targets,
                                                     dataset, refused)):
            if output is not None:
                predictions[int(target["image_id"])] = {k: v.cpu() for k, v in output.items()}
    gathered = distributed.gather_to_main((predictions, loader.skipped + refused))
    if gathered is None:
        return None, []
    merged: list[dict | None] = [None] * len(dataset)
    for part, _ in gathered:
        for index, output in part.items():
            merged[index] = output
    return merged, [sample for _, skipped in gathered for sample in skipped]


def run_model(model, images: list[torch.Tensor], targets: list[dict], dataset, refused: list) -> list[dict | None]:
    """`model(images)`; when the model refuses an image it cannot see (DegenerateImageError:
    it would resize below one pixel on a side), each image runs alone, and each refused one is
    named in `refused` (a SkippedSample) with None for its detections. The others' detections
    do not depend on their batch, so they are the ones the batch would have given."""
    try:
        return model(images)
    except DegenerateImageError:
        pass
    outputs = []
    for image, target in zip(images, targets):
        try:
            outputs += model([image])
        except DegenerateImageError as error:
            index = int(target["image_id"])
            record = dataset.records[index]
            refused.append(SkippedSample(index, str(record.path), record.image_id,
                                         str(error).removeprefix("image 0: ")))
            outputs.append(None)
    return outputs


def validation_model(model, config):
    """What the trainer scores the val set with: `model`, or, when `inference.slice.size` > 0,
    the model predicting sliced (inference/slicing.py), as `detector eval` would with that config.
    Whole val images, sliced, are what a model trained on crops (data.tiles) is meant for."""
    from detector.inference.slicing import SliceSettings, SlicedModel

    settings = SliceSettings.from_config(config.inference.slice)
    return SlicedModel(model, settings) if settings.enabled else model


def evaluate_model(model, dataset, device, out_dir: Path, batch_size: int = 2, workers: int = 0, draw: int = 0) -> dict:
    """COCO metrics of `model` on `dataset`; writes metrics/predictions/ground truth JSON, the
    per-class PR curves and `draw` images with predicted and true boxes into `out_dir`.
    `metrics["skipped_images"]` lists the images that failed to decode or that the model
    refused (too thin to resize), each named; they are not scored.
    With several processes all of them predict, rank 0 scores and writes, all get the metrics."""
    predictions, skipped = predict_dataset(model, dataset, device, batch_size, workers)
    metrics = score_and_write(dataset, predictions, skipped, Path(out_dir), draw) if distributed.is_main() else None
    return distributed.broadcast_from_main(metrics)


def score_and_write(dataset, predictions: list[dict | None], skipped: list, out_dir: Path, draw: int) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    # An image that could not be decoded is left out of the ground truth as well: scoring it as
    # "nothing detected" would report a worse model than the one trained.
    scored = [i for i, p in enumerate(predictions) if p is not None]
    categories = dataset.category_map
    entries = ground_truth_entries(dataset)
    metrics = evaluate([entries[i] for i in scored], [predictions[i] for i in scored],
                       list(zip(categories.ids, categories.names)), out_dir)
    metrics["skipped_images"] = [str(sample) for sample in skipped]
    plot_pr_curves(metrics.pop("pr_curves"), categories.names, out_dir / "pr_curves.png")
    for index in scored[:draw]:
        record = dataset.records[index]
        image, _ = dataset[index]
        draw_detections(
            (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8),
            predictions[index]["boxes"].numpy(), predictions[index]["scores"].numpy(), predictions[index]["labels"].numpy(),
            record.boxes, record.labels, categories.names, out_dir / f"val_{index}_{Path(record.path).stem}.jpg",
            score_thresh=0.3,
        )
    return metrics


def ground_truth_entries(dataset) -> list[dict]:
    """Records as the evaluator's ground truth. COCO keeps its own image ids (so predictions.json
    also scores against the original annotation file); VOC / YOLO ids are file stems, numbered
    from 1 instead."""
    entries = []
    for index, r in enumerate(dataset.records):
        image_id = r.image_id if isinstance(r.image_id, int) else index + 1
        entries.append({"file_name": str(r.path), "width": r.width, "height": r.height, "boxes": r.boxes,
                        "labels": r.labels, "iscrowd": r.iscrowd, "image_id": image_id})
    if len({e["image_id"] for e in entries}) != len(entries):  # mixed ids: number them all
        for index, entry in enumerate(entries):
            entry["image_id"] = index + 1
    return entries
