"""Where the time goes: our Faster R-CNN and torchvision's (the twin of tools/bench_model.py: same
backbone weights and settings, torchvision's detection code, NCHW as it ships), stage by stage,
for a training step (batch 2, forward, backward and optimizer) and for inference (one image).

Forward stages are timed by hooks around the same submodules and methods on both sides. The
backward is cut at the module boundaries (each stage's output is replaced by a detached copy that
collects its gradient), then run stage by stage from the losses down to the backbone, so each
stage's backward is timed alone; CPU autograd runs on one thread, so the cuts take nothing away.
Medians over steps, the two models alternating; the step totals come from separate uncut runs.

    python tools/bench_breakdown.py [--config configs/lite0.yaml] [--steps N] [--doc docs/BENCHMARKS.md]

--doc replaces the table between the breakdown markers of that file with the one printed.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import build_models, load_samples, sgd, time_training  # noqa: E402 - the same models and photos

from detector.data import build_loader, load_dataset  # noqa: E402
from detector.data.datasets import resolve_data_path  # noqa: E402
from detector.engine.allocator import keep_freed_memory  # noqa: E402
from detector.config import DatasetConfig, load_config  # noqa: E402

# The methods that do the same job on both sides, under their own names.
METHODS = {
    "rpn matching": {"ours": ("rpn", "label_anchors"), "torchvision": ("rpn", "assign_targets_to_anchors")},
    "roi sampling": {"ours": ("roi_heads", "label_and_sample_proposals"),
                     "torchvision": ("roi_heads", "select_training_samples")},
    "roi postprocess": {"ours": ("roi_heads", "predict_detections"),
                        "torchvision": ("roi_heads", "postprocess_detections")},
}
# Submodules timed forward, in the order they run; the last four are the backward cuts.
MODULES = ["transform", "backbone", "rpn", "rpn.head", "roi_heads", "roi_heads.box_roi_pool",
           "roi_heads.box_head", "roi_heads.box_predictor"]
CUTS = ["backbone", "rpn.head", "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"]


class StageTimer:
    """Forward times of MODULES and METHODS for one model, and (when cutting) the detached leaves
    that stand for each cut module's output."""

    def __init__(self, model, side: str):
        self.model, self.times, self.cuts, self.cutting = model, defaultdict(float), {}, False
        self.handles = []
        for name in MODULES:
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self._start(name)))
            self.handles.append(module.register_forward_hook(lambda m, a, out, name=name: self._stop(name, out)))
        self.originals = {}
        for label, sides in METHODS.items():
            owner_name, method_name = sides[side]
            owner = model.get_submodule(owner_name)
            method = getattr(owner, method_name)
            self.originals[(owner, method_name)] = method
            setattr(owner, method_name, self._timed(label, method))
        self.started = {}

    def _start(self, name):
        self.started[name] = time.perf_counter()

    def _stop(self, name, output):
        self.times[name] += time.perf_counter() - self.started.pop(name)
        if self.cutting and name in CUTS:
            leaves = _map_tensors(output, lambda t: t.detach().requires_grad_() if t.requires_grad else t)
            self.cuts[name] = (output, leaves)
            return leaves
        return None

    def _timed(self, label, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self.times[label] += time.perf_counter() - start
            return result
        return timed

    def remove(self):
        for handle in self.handles:
            handle.remove()
        for owner, name in self.originals:
            del owner.__dict__[name]  # the class's own method again


def _map_tensors(value, fn):
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, dict):
        return type(value)((k, _map_tensors(v, fn)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _pairs(output, leaves):
    """(original tensor, its leaf's gradient) for every leaf that got a gradient."""
    if torch.is_tensor(output):
        return [(output, leaves.grad)] if leaves is not output and leaves.grad is not None else []
    items = zip(output.values(), leaves.values()) if isinstance(output, dict) else zip(output, leaves)
    return [pair for o, leaf in items for pair in _pairs(o, leaf)]


def training_stages(model, side, images, targets, steps) -> dict[str, float]:
    """Median seconds of each training stage of a batch-2 step, with the backward cut by stage."""
    model.train()
    optimizer = sgd(model)
    timer = StageTimer(model, side)
    timer.cutting = True
    runs = []
    for step in range(steps + 1):
        batch = [(step * 2 + k) % len(images) for k in range(2)]
        timer.times.clear(), timer.cuts.clear()
        losses = model([images[i] for i in batch], [targets[i] for i in batch])
        stages = dict(timer.times)
        start = time.perf_counter()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        stages["backward: losses"] = time.perf_counter() - start
        for name in reversed(CUTS):  # each stage after everything that feeds its output gradient
            pairs = _pairs(*timer.cuts[name])
            start = time.perf_counter()
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            stages[f"backward: {name}"] = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        stages["optimizer step"] = time.perf_counter() - start
        if step:  # the first is warm-up
            runs.append(stages)
    timer.remove()
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in runs[0]}


def inference_stages(model, side, images) -> dict[str, float]:
    model.eval()
    timer = StageTimer(model, side)
    runs = []
    with torch.no_grad():
        model(images[:1])
        for image in images:
            timer.times.clear()
            start = time.perf_counter()
            model([image])
            runs.append({**timer.times, "total": time.perf_counter() - start})
    timer.remove()
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in runs[0]}


def data_seconds_per_batch(batches: int) -> float:
    """Decoding, augmenting (the raccoon recipe's augmentation) and batching 2 raccoon training
    photos in the main process; the same for both sides, and hidden by data.workers."""
    config = load_config("configs/raccoon.yaml")
    folder = resolve_data_path("${DETECTOR_DATA}/raccoon")
    train = DatasetConfig(format="coco", annotations=str(folder / "coco_train.json"))
    dataset = load_dataset(train, augment=config.data.augment)
    loader = build_loader(dataset, 2, train=True, workers=0)
    times, iterator = [], iter(loader)
    for _ in range(batches + 1):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


TRAINING_ROWS = [
    ("transform (normalize, resize, pad)", ["transform"]),
    ("backbone forward", ["backbone"]),
    ("RPN head forward", ["rpn.head"]),
    ("RPN anchor matching", ["rpn matching"]),
    ("RPN anchors, decode, top-n, NMS, loss", ["rpn", "-rpn.head", "-rpn matching"]),
    ("ROI proposal matching + sampling", ["roi sampling"]),
    ("RoIAlign forward", ["roi_heads.box_roi_pool"]),
    ("box head + predictor forward", ["roi_heads.box_head", "roi_heads.box_predictor"]),
    ("ROI loss", ["roi_heads", "-roi sampling", "-roi_heads.box_roi_pool", "-roi_heads.box_head",
                  "-roi_heads.box_predictor"]),
    ("backward: losses", ["backward: losses"]),
    ("backward: box predictor + box head", ["backward: roi_heads.box_predictor", "backward: roi_heads.box_head"]),
    ("backward: RoIAlign", ["backward: roi_heads.box_roi_pool"]),
    ("backward: RPN head", ["backward: rpn.head"]),
    ("backward: backbone", ["backward: backbone"]),
    ("optimizer step (SGD, momentum)", ["optimizer step"]),
]
INFERENCE_ROWS = [
    ("transform (normalize, resize, pad)", ["transform"]),
    ("backbone", ["backbone"]),
    ("RPN head", ["rpn.head"]),
    ("RPN anchors, decode, top-n, NMS", ["rpn", "-rpn.head"]),
    ("RoIAlign", ["roi_heads.box_roi_pool"]),
    ("box head + predictor", ["roi_heads.box_head", "roi_heads.box_predictor"]),
    ("scores, decode, NMS, top 100", ["roi postprocess"]),
]


def combine(stages: dict[str, float], keys: list[str]) -> float:
    """The sum of `keys`' times, "-key" subtracted (a stage's own time: its parent minus its parts);
    at least 0, as the hooks' own overhead can make a near-empty remainder negative."""
    return max(0.0, sum(-stages.get(k[1:], 0.0) if k.startswith("-") else stages.get(k, 0.0) for k in keys))


def table(title, rows, ours, theirs, totals) -> list[str]:
    lines = [f"| {title} | ours ms | torchvision ms | torchvision / ours |", "|---|---|---|---|"]
    for label, keys in rows:
        a, b = combine(ours, keys) * 1000, combine(theirs, keys) * 1000
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x |" if a > 0.05 else f"| {label} | {a:.1f} | {b:.1f} | - |")
    for label, (a, b) in totals.items():
        lines.append(f"| **{label}** | **{a * 1000:.1f}** | **{b * 1000:.1f}** | **{b / a:.2f}x** |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/lite0.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per round (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the models alternating")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--doc", default=None, help="markdown file whose breakdown section to replace")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as detector train / predict run on the CPU (train.keep_freed_memory)
    images, targets = load_samples(args.images)
    models = build_models(SimpleNamespace(config=args.config, set=args.set))
    sides = ["ours", "torchvision"]
    results = {side: defaultdict(list) for side in sides}
    for round_index in range(args.rounds):
        for side in sides if round_index % 2 == 0 else sides[::-1]:
            model = models[side]
            torch.manual_seed(1)
            results[side]["train"].append(training_stages(model, side, images, targets, args.steps))
            torch.manual_seed(1)
            results[side]["step"].append(time_training(model, images, targets, args.steps))
            results[side]["infer"].append(inference_stages(model, side, images))

    def median_of(side, what):
        runs = results[side][what]
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    ours_train, theirs_train = median_of("ours", "train"), median_of("torchvision", "train")
    ours_infer, theirs_infer = median_of("ours", "infer"), median_of("torchvision", "infer")
    data = data_seconds_per_batch(6)
    step = (statistics.median(results["ours"]["step"]), statistics.median(results["torchvision"]["step"]))
    settings = f"`{args.config}`" + (f" with `{' '.join(args.set)}`" if args.set else "")
    lines = [
        f"{settings}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads; freed memory kept (both models); {args.images} raccoon val photos; "
        f"medians of {args.rounds} rounds x {args.steps} steps; "
        f"`python tools/bench_breakdown.py{' --config ' + args.config if args.config != 'configs/lite0.yaml' else ''}`",
        "",
        *table("training step, batch 2", TRAINING_ROWS, ours_train, theirs_train,
               {"sum of the stages": (sum(combine(ours_train, k) for _, k in TRAINING_ROWS),
                                      sum(combine(theirs_train, k) for _, k in TRAINING_ROWS)),
                "whole step, uncut": step}),
        "",
        *table("inference, one image", INFERENCE_ROWS, ours_infer, theirs_infer,
               {"whole call": (ours_infer["total"], theirs_infer["total"])}),
        "",
        f"Data, the same loader for both: decoding, augmenting (the raccoon recipe's augmentation) and batching "
        f"2 raccoon training photos takes {data * 1000:.0f} ms in the main process; `data.workers` processes do it "
        f"beside the step.",
    ]
    print("\n".join(lines))
    if args.doc:
        path = Path(args.doc)
        text = path.read_text()
        start, end = "<!-- breakdown:start -->", "<!-- breakdown:end -->"
        if start not in text or end not in text:
            sys.exit(f"{path}: has no {start} ... {end} section to replace")
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{chr(10).join(lines)}\n{end}",
                      text, flags=re.S)
        path.write_text(text)
        print(f"wrote the table into {path}")


if __name__ == "__main__":
    main()
