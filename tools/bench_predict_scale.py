"""Images per second of `detector predict` in one process and on Ray with 1 and 2 workers, side
by side in one process, on the same folder of real photos (scikit-image's, repeated).

  local predict  the command without --ray (inference/runner.py): annotated images written
  local records  what a Ray worker does (decode, predict a batch, a JSON record each, shards),
                 in this process: the baseline of the Ray overhead
  ray 1 / ray 2  `detector predict --ray` with 1 and 2 workers (inference/ray_predict.py)
  predict only   an actor's share alone: batches of decoded images through the predictor and
                 to JSON (what --gpus-per-worker is sized on; decoding runs on other cores)

Every method gets one CPU thread per worker, so that "ray 1" and the local runs use the same
compute. Methods are interleaved, round after round, and each number is the median over the
rounds (spread: min-max). Two rates per method: steady (images after the first result / time
from the first result to the last: what a million images see) and end-to-end (model loading,
Ray's actor start-up included: what a few hundred images see).

    python tools/bench_predict_scale.py [--config configs/lite0.yaml] [--images 32] [--rounds 2]
                                        [--batch-size 4] [--set KEY=VALUE ...] [--device cpu]
                                        [--methods "local records,predict only"]
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_batching import model_with_detections, photos  # noqa: E402

from detector import load_config  # noqa: E402
from detector.config import config_to_dict  # noqa: E402
from detector.engine.checkpoint import save_checkpoint  # noqa: E402
from detector.inference import load_predictor  # noqa: E402
from detector.inference.jsonl import ShardStore  # noqa: E402
from detector.inference.ray_predict import RayOptions, predict_on_ray  # noqa: E402
from detector.inference.records import decode, predict_records  # noqa: E402
from detector.inference.runner import predict_sources  # noqa: E402


def write_photos(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    images = photos()
    for index in range(count):
        cv2.imwrite(str(folder / f"photo_{index:04d}.jpg"), images[index % len(images)][:, :, ::-1])
    return sorted(str(p) for p in folder.iterdir())


def local_predict(spec: dict, folder: Path, out: Path, stamps: list) -> None:
    predictor = load_predictor(**spec)
    predict_sources(predictor, [str(folder)], out, log=lambda _: stamps.append(time.monotonic()))


def local_records(spec: dict, files: list[str], out: Path, batch_size: int, stamps: list) -> None:
    predictor = load_predictor(**spec)
    store = ShardStore(out, shard_size=batch_size)
    store.open(spec)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        for record in predict_records(predictor, chunk, [decode(file) for file in chunk], batch_size):
            store.add(record["file"], record.get("skipped"), json.dumps(record))
        stamps.extend([time.monotonic()] * len(chunk))
    store.finish()


def predict_only(spec: dict, files: list[str], batch_size: int, stamps: list) -> None:
    predictor = load_predictor(**spec)
    images = [decode(file) for file in files]
    if spec["device"].startswith("cuda"):
        predictor.predict(images[:batch_size], batch_size)  # CUDA's start-up is no part of a batch's cost
        torch.cuda.synchronize()
    for start in range(0, len(files), batch_size):
        records = predict_records(predictor, files[start:start + batch_size], images[start:start + batch_size],
                                  batch_size)
        json.dumps(records)
        stamps.extend([time.monotonic()] * len(records))


def on_ray(spec: dict, folder: Path, out: Path, workers: int, batch_size: int, gpus: int, stamps: list) -> None:
    def log(message: str) -> None:  # "N of M images done (...)", once per shard (a shard = a batch here)
        done = re.match(r"(\d+) of \d+ images done", message)
        if done:
            stamps.extend([time.monotonic()] * (int(done.group(1)) - len(stamps)))

    options = RayOptions(workers=workers, batch_size=batch_size, shard_size=batch_size, gpus_per_worker=gpus)
    predict_on_ray(spec, [str(folder)], out, options, log=log)


def rates(started: float, stamps: list[float]) -> tuple[float, float]:
    """(steady, end-to-end) images/s: steady counts the images after the first result came
    (a batch or a shard of them at once), over the time from it to the last."""
    after_first = len(stamps) - stamps.count(stamps[0])
    steady = after_first / (stamps[-1] - stamps[0]) if after_first else float("nan")
    return steady, len(stamps) / (stamps[-1] - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lite0.yaml")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu", help="of every method (Ray actors then reserve a GPU each)")
    parser.add_argument("--methods", default="local predict,local records,ray 1 worker,ray 2 workers",
                        help="comma-separated, of: local predict, local records, ray 1 worker, ray 2 workers, "
                             "predict only")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.methods.split(",")]

    torch.set_num_threads(1)  # the local runs get what one Ray worker gets: one core
    root = Path(tempfile.mkdtemp(prefix="bench-predict-scale-"))
    config = load_config(args.config, ["model.backbone.pretrained=false", "model.num_classes=4", *args.overrides])
    save_checkpoint({"model": model_with_detections(config, torch.device("cpu")).state_dict(),
                     "config": config_to_dict(config),
                     "categories": {"ids": [1, 2, 3, 4], "names": ["a", "b", "c", "d"]}}, root / "model.pt")
    files = write_photos(root / "photos", args.images)
    spec = {"weights": str(root / "model.pt"), "device": args.device}
    gpus = 1 if args.device.startswith("cuda") else 0
    methods = {
        "local predict": lambda out, stamps: local_predict(spec, root / "photos", out, stamps),
        "local records": lambda out, stamps: local_records(spec, files, out, args.batch_size, stamps),
        "ray 1 worker": lambda out, stamps: on_ray(spec, root / "photos", out, 1, args.batch_size, gpus, stamps),
        "ray 2 workers": lambda out, stamps: on_ray(spec, root / "photos", out, 2, args.batch_size, gpus, stamps),
        "predict only": lambda out, stamps: predict_only(spec, files, args.batch_size, stamps),
    }
    methods = {name: methods[name] for name in chosen}
    uses_ray = any(name.startswith("ray") for name in methods)
    if uses_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for round_number in range(args.rounds):
        for name, method in methods.items():  # interleaved: a load spike hits every method alike
            stamps: list[float] = []
            started = time.monotonic()
            method(root / f"{name.replace(' ', '_')}_{round_number}", stamps)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            assert len(stamps) == args.images, f"{name}: {len(stamps)} of {args.images} images"
            results[name].append(rates(started, stamps))
            print(f"round {round_number + 1} {name:<14} steady {results[name][-1][0]:6.2f} images/s, "
                  f"end-to-end {results[name][-1][1]:6.2f}", flush=True)
    if uses_ray:
        ray.shutdown()

    median = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    print(f"\n{args.images} photos (scikit-image, {args.config} {' '.join(args.overrides)}), batch {args.batch_size}, "
          f"{args.rounds} rounds, {args.device}, {torch.get_num_threads()} thread per worker\n")
    print("| method | steady images/s (min-max) | end-to-end images/s (min-max) |")
    print("|---|---|---|")
    for name, runs in results.items():
        steady, total = [r[0] for r in runs], [r[1] for r in runs]
        print(f"| {name} | {median[name]:.2f} ({min(steady):.2f}-{max(steady):.2f}) | "
              f"{statistics.median(total):.2f} ({min(total):.2f}-{max(total):.2f}) |")
    print()
    if {"ray 1 worker", "local records"} <= set(median):
        overhead = 1 - median["ray 1 worker"] / median["local records"]
        print(f"Ray overhead at 1 worker vs local records (steady): {overhead:+.1%} (target <= 10%)")
    if {"ray 1 worker", "local predict"} <= set(median):
        print(f"Ray overhead at 1 worker vs local predict (steady): "
              f"{1 - median['ray 1 worker'] / median['local predict']:+.1%}")
    if {"ray 1 worker", "ray 2 workers"} <= set(median):
        print(f"parallel efficiency, 2 workers vs 1 (steady): {median['ray 2 workers'] / (2 * median['ray 1 worker']):.0%}")
    for name, rate in median.items():
        print(f"per-image cost, {name} (steady): {1000 / rate:.1f} ms")


if __name__ == "__main__":
    main()
