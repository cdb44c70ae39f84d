"""Does `torch.compile` pay on this machine? Our model eager against the same model with
`train.compile` / `--compile` (backbone and RPN head compiled), on real raccoon photos all
resized to one size, compile's best case (each new input size compiles again): training seconds
per iteration (batch 2) and inference seconds per image after compilation, the compilation time
itself (first calls minus eager first calls), and the iterations it takes to win that time back.
Also checks the compiled model's detections.

    python tools/bench_compile.py [--config configs/raccoon.yaml] [--images N] [--iters N] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import load_samples, sgd, training_step  # noqa: E402 - the same photos, targets and step

from detector import build_model, load_config  # noqa: E402
from detector.modeling.compilation import compile_model  # noqa: E402
from detector.engine.allocator import keep_freed_memory  # noqa: E402


def one_size(images, targets, size):
    resized = [torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
               for image in images]
    scaled = []
    for image, target in zip(images, targets):
        scale = torch.tensor([size[1] / image.shape[2], size[0] / image.shape[1]] * 2)
        scaled.append({**target, "boxes": target["boxes"] * scale})
    return resized, scaled


def training_times(model, images, targets, iters: int) -> list[float]:
    model.train()
    optimizer = sgd(model)
    times = []
    for step in range(iters):
        start = time.perf_counter()
        training_step(model, optimizer, images, targets, step)
        times.append(time.perf_counter() - start)
    return times


def inference_times(model, images) -> tuple[list[float], list[dict]]:
    model.eval()
    times, outputs = [], []
    with torch.no_grad():
        for image in images:
            start = time.perf_counter()
            outputs += model([image])
            times.append(time.perf_counter() - start)
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/raccoon.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8, help="training iterations timed after the first of each model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, nargs=2, default=(416, 576), metavar=("H", "W"),
                        help="every photo is resized to this (the recipe's own size: the model resizes nothing)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as detector train / predict run on the CPU (train.keep_freed_memory)
    images, targets = load_samples(args.images)
    images, targets = one_size(images, targets, args.size)
    torch.manual_seed(0)
    config = load_config(args.config, ["model.num_classes=1", *args.set])
    eager = build_model(config).to(memory_format=torch.channels_last)
    compiled = compile_model(copy.deepcopy(eager))

    rows = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(1)
        train = training_times(model, images, targets, args.iters + 1)  # the first includes any compilation
        infer, outputs = inference_times(model, images + images[:1])  # the first includes any compilation
        rows[name] = {"train first": train[0], "train": statistics.median(train[1:]),
                      "infer first": infer[0], "infer": statistics.median(infer[1:]), "outputs": outputs[1:]}

    pairs = list(zip(rows["eager"]["outputs"], rows["compiled"]["outputs"]))
    same = all(torch.equal(a["labels"], b["labels"]) for a, b in pairs)
    difference = max(((a["boxes"] - b["boxes"]).abs().max().item() for a, b in pairs if len(a["boxes"])), default=0.0)
    print(f"\nconfig {args.config} {' '.join(args.set)} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"{args.images} raccoon val photos resized to {args.size[0]}x{args.size[1]}")
    print(f"compiled detections: same labels {same}, largest box difference {difference:.1e} px")
    print(f"{'measure':<26}{'eager':>10}{'compiled':>10}{'speed-up':>10}{'compile s':>11}{'pays back after':>17}")
    for what, key in (("training s/iter (batch 2)", "train"), ("inference s/image", "infer")):
        plain, fast = rows["eager"][key], rows["compiled"][key]
        compile_seconds = rows["compiled"][f"{key} first"] - rows["eager"][f"{key} first"]
        saved = plain - fast
        payback = f"{compile_seconds / saved:.0f} {'iters' if key == 'train' else 'images'}" if saved > 0 else "never"
        print(f"{what:<26}{plain:>10.3f}{fast:>10.3f}{plain / fast:>10.2f}{compile_seconds:>11.1f}{payback:>17}")


if __name__ == "__main__":
    main()
