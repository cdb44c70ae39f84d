"""Sliced prediction against SAHI, on the same weights and images, side by side in one process.

    pip install --no-deps "sahi>=0.12,<0.13" shapely fire termcolor   # --no-deps: sahi pins
        # opencv-python, which would shadow the opencv-python-headless the package uses
    python tools/bench_slicing.py --weights runs/shapes_tiles/weights/best.pt --config configs/shapes_tiles.yaml

Prints one table:
- AP, AP50 and AP_small of the val set: our whole-image pass, our sliced pass, SAHI's
  get_sliced_prediction around our predictor one tile at a time (SAHI's default batch_size=1) and
  in batches (`--batch`), each with its wall time (the fastest of `--rounds` passes, the runs
  taking turns) and its ratio to ours; and SAHI as shipped, which below a score threshold of 0.3
  replaces GREEDYNMM/IOS by NMS/IOU (its merge keeps the union of a group's boxes, which low-score
  boxes around an object inflate);
- the merge alone: ours (inference/merging.py) against SAHI's GreedyNMMPostprocess (IOS, 0.5,
  class-aware) on the same 1,000 and 10,000 boxes.

SAHI runs with the settings of ours: the same slice size and overlap, no standard (full-image)
prediction, GREEDYNMM on IOS at the same threshold, class-aware, the model's own score threshold.
The adapter (`DetectorSahiModel`) lives here, not in the package: SAHI is a benchmark dependency.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import load_config  # noqa: E402
from detector.data import CategoryMap, load_dataset  # noqa: E402
from detector.data.dataset import read_image  # noqa: E402
from detector.engine.evaluation import ground_truth_entries  # noqa: E402
from detector.engine.evaluator import evaluate  # noqa: E402
from detector.inference import load_predictor  # noqa: E402
from detector.inference.merging import merge_detections  # noqa: E402
from detector.inference.slicing import SliceSettings  # noqa: E402


def sahi_model_class():
    """SAHI's DetectionModel around one of our predictors (a class made once SAHI is imported)."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DetectorSahiModel(DetectionModel):
        """Our predictor as a SAHI model: one tile per call, or (perform_batch_inference) a
        batch of tiles in one predictor call, each tile shifted by its own offset."""

        def set_model(self, model, **kwargs):
            self.model = model
            self.category_mapping = {str(i + 1): name for i, name in enumerate(model.category_names)}

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model.predict([image])

        def perform_batch_inference(self, images: list[np.ndarray]) -> None:
            self._original_predictions = self.model.predict(images, batch_size=len(images))

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],
                                                                     full_shape_list=None) -> None:
            if shift_amount_list and isinstance(shift_amount_list[0], int):
                shift_amount_list = [shift_amount_list]
            if full_shape_list and isinstance(full_shape_list[0], int):
                full_shape_list = [full_shape_list]
            per_image = []
            for index, detection in enumerate(self._original_predictions):
                shift = shift_amount_list[index] if shift_amount_list else [0, 0]
                full_shape = full_shape_list[index] if full_shape_list else None
                per_image.append([
                    ObjectPrediction(bbox=box.tolist(), category_id=int(label), score=float(score), shift_amount=shift,
                                     category_name=self.category_mapping[str(int(label))], full_shape=full_shape)
                    for box, score, label in zip(detection["boxes"], detection["scores"], detection["labels"])
                    if score > self.confidence_threshold])
            self._object_prediction_list_per_image = per_image

    return DetectorSahiModel


class TileFloor:
    """The model's forward passes on an image's tiles and nothing else (no merge, no shifting):
    what any sliced prediction costs at least, to tell orchestration from model time."""

    def __init__(self, model, slicing: SliceSettings):
        from detector.inference.slicing import tile_windows

        self.model, self.slicing, self.windows = model, slicing, tile_windows

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict:
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        tiles = [tensor[:, y1:y2, x1:x2] for x1, y1, x2, y2 in
                 self.windows(image.shape[0], image.shape[1], self.slicing.size, self.slicing.overlap)]
        for start in range(0, len(tiles), self.slicing.batch_size):
            self.model(tiles[start:start + self.slicing.batch_size])
        return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}


def timed(predict, images: list[np.ndarray]) -> tuple[list[dict], float]:
    start = time.perf_counter()
    results = [predict(image) for image in images]
    return results, time.perf_counter() - start


def sahi_predict(model, slicing: SliceSettings, batch: int, force: bool = True):
    """SAHI's get_sliced_prediction with our settings. force=False is SAHI as shipped: below a
    confidence threshold of 0.3 it replaces GREEDYNMM/IOS by NMS/IOU, with a warning."""
    from sahi.predict import get_sliced_prediction

    def predict(image: np.ndarray) -> dict:
        result = get_sliced_prediction(image, model, slice_height=slicing.size, slice_width=slicing.size,
                                       overlap_height_ratio=slicing.overlap, overlap_width_ratio=slicing.overlap,
                                       perform_standard_pred=False, postprocess_type="GREEDYNMM",
                                       postprocess_match_metric="IOS", postprocess_match_threshold=slicing.match_threshold,
                                       postprocess_class_agnostic=False, verbose=0, batch_size=batch,
                                       force_postprocess_type=force)
        found = result.object_prediction_list
        return {"boxes": np.array([p.bbox.to_xyxy() for p in found], dtype=np.float32).reshape(-1, 4),
                "scores": np.array([p.score.value for p in found], dtype=np.float32),
                "labels": np.array([p.category.id for p in found], dtype=np.int64)}

    return predict


def merge_inputs(count: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """`count` boxes as sliced prediction makes them on a 4000 x 3000 image: objects of 10-60 px
    of 3 classes, each seen by 1 to 4 tiles with a few pixels of jitter."""
    generator = torch.Generator().manual_seed(seed)
    objects = count // 2
    corner = torch.rand(objects, 2, generator=generator) * torch.tensor([3940.0, 2940.0])
    size = 10 + torch.rand(objects, 2, generator=generator) * 50
    which = torch.randint(0, objects, (count,), generator=generator)
    jitter = (torch.rand(count, 4, generator=generator) - 0.5) * 4
    boxes = torch.cat([corner[which], corner[which] + size[which]], 1) + jitter
    scores = torch.rand(count, generator=generator)
    labels = (which % 3 + 1).long()
    sources = torch.randint(0, 80, (count,), generator=generator)
    return boxes, scores, labels, sources


def merge_times(count: int, threshold: float, rounds: int) -> tuple[float, float]:
    """Seconds to merge the same `count` boxes: ours, SAHI's GreedyNMMPostprocess (best of `rounds`)."""
    from sahi.postprocess.combine import GreedyNMMPostprocess
    from sahi.prediction import ObjectPrediction

    boxes, scores, labels, sources = merge_inputs(count)
    ours = []
    for _ in range(rounds):
        start = time.perf_counter()
        merge_detections(boxes, scores, labels, sources, None, threshold)
        ours.append(time.perf_counter() - start)
    predictions = [ObjectPrediction(bbox=b.tolist(), category_id=int(l), score=float(s), category_name=str(int(l)))
                   for b, s, l in zip(boxes, scores, labels)]
    postprocess = GreedyNMMPostprocess(match_threshold=threshold, match_metric="IOS", class_agnostic=False)
    theirs = []
    for _ in range(rounds):
        start = time.perf_counter()
        postprocess(list(predictions))
        theirs.append(time.perf_counter() - start)
    return min(ours), min(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--config", required=True, help="config naming the val set (e.g. configs/shapes_tiles.yaml)")
    parser.add_argument("--slice", type=int, default=None, help="tile size (default: the config's inference.slice.size)")
    parser.add_argument("--overlap", type=float, default=None)
    parser.add_argument("--batch", type=int, default=8, help="tiles per batch: ours, and SAHI's batch_size row")
    parser.add_argument("--images", type=int, default=None, help="use the first N val images")
    parser.add_argument("--rounds", type=int, default=2,
                        help="passes over the images; the runs take turns, each keeps its fastest pass")
    parser.add_argument("--merge-rounds", type=int, default=3)
    parser.add_argument("--skip-sahi-single", action="store_true", help="leave out SAHI's one-tile-at-a-time row")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    config = load_config(args.config)
    slicing = SliceSettings.from_config(config.inference.slice, size=args.slice, overlap=args.overlap,
                                        batch_size=args.batch, full_image=False)
    if not slicing.enabled:
        sys.exit("give --slice SIZE, or a config with inference.slice.size > 0")
    plain = load_predictor(args.weights, "cpu", slicing=SliceSettings())
    sliced = load_predictor(args.weights, "cpu", slicing=slicing)
    categories = CategoryMap(tuple(plain.category_ids), tuple(plain.category_names))
    dataset = load_dataset(config.data.val, categories, policy="skip")
    entries = ground_truth_entries(dataset)[:args.images]
    images = [read_image(entry["file_name"]) for entry in entries]
    pairs = list(zip(categories.ids, categories.names))
    score_thresh = float(plain.saved_config.get("model", {}).get("roi_heads", {}).get("score_thresh", 0.05))
    sahi_model = sahi_model_class()(model=plain, confidence_threshold=score_thresh - 1e-6, device="cpu")
    print(f"{len(images)} val images of {config.data.val.root or config.data.val.images}, "
          f"{sum(len(e['boxes']) for e in entries)} objects; {slicing.describe()}; torch threads {torch.get_num_threads()}")

    floor = TileFloor(plain.model, slicing)
    runs = [("ours, whole image", lambda image: plain.predict([image])[0]),
            (f"the model alone on the tiles (batch {args.batch}: the floor)", floor),
            (f"ours, sliced (batch {args.batch})", lambda image: sliced.predict([image])[0])]
    if not args.skip_sahi_single:
        runs.append(("SAHI 0.12, batch_size=1 (default)", sahi_predict(sahi_model, slicing, 1)))
    runs.append((f"SAHI 0.12, batch_size={args.batch}", sahi_predict(sahi_model, slicing, args.batch)))
    runs.append(("SAHI 0.12, batch_size=1, as shipped (NMS/IOU below score 0.3)",
                 sahi_predict(sahi_model, slicing, 1, force=False)))
    for _, predict in runs:
        predict(images[0])  # warm-up: first-call allocations are no one's cost
    metrics, seconds = {}, {name: float("inf") for name, _ in runs}
    for _ in range(args.rounds):  # in turns: a machine that slows down slows every run alike
        for name, predict in runs:
            results, wall = timed(predict, images)
            seconds[name] = min(seconds[name], wall)
            metrics[name] = evaluate(entries, results, pairs) if not isinstance(predict, TileFloor) else {
                "AP": None, "AP50": None, "APs": None}
    rows = [(name, metrics[name], seconds[name]) for name, _ in runs]
    sliced_seconds = next(wall for name, _, wall in rows if name.startswith("ours, sliced"))
    print(f"\n| run | AP | AP50 | AP_small | wall s | s/image | wall / ours sliced |\n|---|---|---|---|---|---|---|")
    for name, metrics, seconds in rows:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {name} | {fmt(metrics['AP'])} | {fmt(metrics['AP50'])} | {fmt(metrics['APs'])} | {seconds:.1f} | "
              f"{seconds / len(images):.3f} | {seconds / sliced_seconds:.2f} |")

    print("\n| merge (GREEDYNMM, IOS 0.5, class-aware) | ours s | SAHI s | SAHI / ours |\n|---|---|---|---|")
    for count in (1000, 10000):
        ours, theirs = merge_times(count, slicing.match_threshold, args.merge_rounds)
        print(f"| {count:,} boxes | {ours:.4f} | {theirs:.3f} | {theirs / ours:.0f}x |")


if __name__ == "__main__":
    main()
