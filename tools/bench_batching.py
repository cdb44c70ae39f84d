"""What batch-independent inference costs on batches of mixed image sizes, on this machine.

The model runs only images of one padded size together (modeling/transform.py
`run_size_groups`), so an image's detections are the same alone and in any batch. Before, a
batch was padded to its largest image: one forward for all, but the smaller images' detections
changed. This script times both on the same batch of real photos of different sizes
(scikit-image's), in one process, alternating, and counts how many detections of each image
match the image run alone (same label, IoU >= 0.999, |score difference| <= 1e-4).

    python tools/bench_batching.py [--config configs/lite0.yaml] [--device auto] [--batch 7] [--rounds 5]
                                   [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from skimage import data

from detector import build_model, load_config
from detector.engine.allocator import keep_freed_memory


def photos() -> list[np.ndarray]:
    """Seven real RGB photos of different sizes (scikit-image's data, installed offline)."""
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
            data.hubble_deep_field(), data.stereo_motorcycle()[0]]


def model_with_detections(config, device: torch.device):
    """The config's model with heads drawn so that real photos get detections across 0..1."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    torch.nn.init.normal_(model.rpn.head.cls_logits.weight, std=0.05)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.01)
    memory_format = torch.channels_last if config.train.channels_last else torch.preserve_format
    return model.to(device, memory_format=memory_format)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def matched(reference: dict, other: dict) -> int:
    """Detections of `reference` with a partner in `other`."""
    if not len(reference["boxes"]) or not len(other["boxes"]):
        return 0
    overlap = iou(reference["boxes"].double(), other["boxes"].double())
    partner = ((reference["labels"][:, None] == other["labels"][None, :]) & (overlap >= 0.999)
               & ((reference["scores"][:, None] - other["scores"][None, :]).abs() <= 1e-4))
    return int(partner.any(dim=1).sum())


def timed(run, device: torch.device) -> tuple[float, list[dict]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        outputs = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, [{k: v.cpu() for k, v in o.items()} for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lite0.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=7, help="images per batch (the photos repeat past seven)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--tf32", choices=("on", "off"), default=None,
                        help="CUDA: let cuDNN convolutions round to TF32 (PyTorch's default: on)")
    args = parser.parse_args()
    if args.tf32:
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    config = load_config(args.config, ["model.backbone.pretrained=false", "model.num_classes=4", *args.overrides])
    if device.type == "cpu":
        keep_freed_memory()  # as `detector predict` runs on the CPU (engine/allocator.py)
    model = model_with_detections(config, device)
    pool = photos()
    images = [torch.from_numpy(np.ascontiguousarray(pool[i % len(pool)])).permute(2, 0, 1).float().div(255).to(device)
              for i in range(args.batch)]
    groups = len(model.transform.run_size_groups(images))
    ways = {"grouped by padded size (now)": lambda: model(images),
            "padded to the largest (before)": lambda: model.detect_same_size(images)}
    for run in ways.values():  # warm-up: kernels, autotuning, allocator
        timed(run, device)
    times = {name: [] for name in ways}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in ways.items():  # alternating, so drift hits both alike
            seconds, outputs[name] = timed(run, device)
            times[name].append(seconds)
    alone = [timed(lambda image=image: model([image]), device)[1][0] for image in images]
    total = sum(len(d["boxes"]) for d in alone)
    again = [timed(lambda image=image: model([image]), device)[1][0] for image in images]
    repeatable = sum(matched(a, b) for a, b in zip(alone, again))
    print(f"{args.config} {' '.join(args.overrides)} on {device} ({torch.get_num_threads()} threads); "
          f"{args.batch} photos of {len({tuple(i.shape) for i in images})} sizes in {groups} padded-size groups; "
          f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}; "
          f"alone twice: {repeatable} of {total} detections the same; median of {args.rounds} rounds (ranges: {' / '.join(f'{min(t):.3f}-{max(t):.3f} s' for t in times.values())})")
    print(f"| batching | s / batch | s / image | detections as alone (of {total}) |")
    print("|---|---|---|---|")
    for name in ways:
        median = statistics.median(times[name])
        same = sum(matched(a, b) for a, b in zip(alone, outputs[name]))
        print(f"| {name} | {median:.4f} | {median / args.batch:.4f} | {same} |")
    now, before = (statistics.median(times[name]) for name in ways)
    print(f"grouped / padded time: {now / before:.2f}")


if __name__ == "__main__":
    main()
