"""What test-time augmentation costs and gives: the same weights and val images predicted without
TTA and with it, side by side in one process, the runs taking turns (`--rounds`).

    python tools/bench_tta.py --weights runs/shapes_tiles/weights/best.pt --config configs/shapes_tiles.yaml \\
        --scales 256,320,384

Prints one table: AP, AP50, AP75 and AP_small of the val set, the wall time and the CPU time of
each run (its fastest pass) and their ratios to the run without TTA. On a machine shared with
other work the CPU time (one torch thread: OMP_NUM_THREADS=1) is the steadier of the two. Rows: no TTA; the mirror (`--tta`); the
mirror at each of `--scales` (when given); and, for the mirror, two other merges, to show why
inference/tta.py merges views as it does: the group's best score instead of the views' mean,
and the slicing merge unchanged (IoS 0.5, the best score). The config's inference.slice applies
to every run (TTA of the sliced predictor) unless `--slice 0`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
from detector.inference.tta import TtaModel, TtaSettings  # noqa: E402


class BestScoreMerge(TtaModel):
    """The views merged with the group's best score (the slicing rule), on `overlap`."""

    def __init__(self, model: TtaModel, overlap: str, threshold: float):
        super().__init__(model.views, model.settings, model.score_thresh)
        self.overlap, self.threshold = overlap, threshold

    def merge_views(self, outputs):
        sources = [torch.full_like(output["labels"], view) for view, output in enumerate(outputs)]
        boxes, scores, labels = merge_detections(
            torch.cat([o["boxes"] for o in outputs]), torch.cat([o["scores"] for o in outputs]),
            torch.cat([o["labels"] for o in outputs]), torch.cat(sources), None, self.threshold, overlap=self.overlap)
        return {"boxes": boxes, "scores": scores, "labels": labels}


def as_predict(predictor, model=None):
    """image -> detections (numpy) of `predictor`, through `model` instead of its own when given."""
    @torch.no_grad()
    def predict(image):
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        output = (model or predictor.model)([tensor])[0]
        return {key: value.numpy() for key, value in output.items()}
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--config", required=True, help="config naming the val set (e.g. configs/shapes_tiles.yaml)")
    parser.add_argument("--scales", default=None, help="comma-separated min_size values of a multi-scale row")
    parser.add_argument("--slice", type=int, default=None, help="tile size; 0 = whole images (default: the config's)")
    parser.add_argument("--images", type=int, default=None, help="use the first N val images")
    parser.add_argument("--rounds", type=int, default=2,
                        help="passes over the images; the runs take turns, each keeps its fastest pass")
    parser.add_argument("--no-merge-rows", action="store_true", help="leave out the two other merges")
    args = parser.parse_args()

    config = load_config(args.config)
    slicing = SliceSettings.from_config(config.inference.slice, size=args.slice)
    plain = load_predictor(args.weights, "cpu", slicing=slicing, tta=TtaSettings())
    mirror = load_predictor(args.weights, "cpu", slicing=slicing, tta=TtaSettings(hflip=True))
    runs = [("no TTA", as_predict(plain)), (mirror.tta.describe(), as_predict(mirror))]
    if args.scales:
        scaled = load_predictor(args.weights, "cpu", slicing=slicing,
                                tta=TtaSettings(hflip=True, scales=tuple(int(s) for s in args.scales.split(","))))
        runs.append((scaled.tta.describe(), as_predict(scaled)))
    if not args.no_merge_rows:
        runs.append(("TTA mirror, merged IoU 0.55 with the best score", as_predict(
            mirror, BestScoreMerge(mirror.model, "iou", mirror.tta.match_threshold))))
        runs.append(("TTA mirror, merged as tiles (IoS 0.5, the best score)", as_predict(
            mirror, BestScoreMerge(mirror.model, "ios", 0.5))))

    categories = CategoryMap(tuple(plain.category_ids), tuple(plain.category_names))
    dataset = load_dataset(config.data.val, categories, policy="skip")
    entries = ground_truth_entries(dataset)[:args.images]
    images = [read_image(entry["file_name"]) for entry in entries]
    pairs = list(zip(categories.ids, categories.names))
    print(f"{len(images)} val images of {config.data.val.root or config.data.val.images}, "
          f"{sum(len(e['boxes']) for e in entries)} objects; {slicing.describe() if slicing.enabled else 'whole images'}; "
          f"torch threads {torch.get_num_threads()}")
    for _, predict in runs:
        predict(images[0])  # warm-up: first-call allocations are no one's cost
    metrics = {}
    seconds = {name: float("inf") for name, _ in runs}
    cpu_seconds = dict(seconds)
    for _ in range(args.rounds):  # in turns: a machine that slows down slows every run alike
        for name, predict in runs:
            start, cpu_start = time.perf_counter(), time.process_time()
            results = [predict(image) for image in images]
            seconds[name] = min(seconds[name], time.perf_counter() - start)
            cpu_seconds[name] = min(cpu_seconds[name], time.process_time() - cpu_start)
            metrics[name] = evaluate(entries, results, pairs)
    base, cpu_base = seconds["no TTA"], cpu_seconds["no TTA"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print("\n| run | AP | AP50 | AP75 | AP_small | wall s | wall / no TTA | CPU s | CPU / no TTA |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, _ in runs:
        m = metrics[name]
        print(f"| {name} | {fmt(m['AP'])} | {fmt(m['AP50'])} | {fmt(m['AP75'])} | {fmt(m['APs'])} | "
              f"{seconds[name]:.1f} | {seconds[name] / base:.2f} | {cpu_seconds[name]:.1f} | "
              f"{cpu_seconds[name] / cpu_base:.2f} |")


if __name__ == "__main__":
    main()
