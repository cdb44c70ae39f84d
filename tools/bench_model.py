"""Our Faster R-CNN against torchvision's FasterRCNN built from the same backbone weights and
settings, on this machine: inference seconds per image (median over real photos), training
seconds per iteration (batch 2) and the peak memory of a training step. Prints a table; also
checks both give the same detections, in float32 and in float64.

Three models: ours as `detector train` / `predict` run it (channels-last when
`train.channels_last`, the default), torchvision's as it ships (NCHW), and torchvision's
converted by hand with `model.to(memory_format=torch.channels_last)`, so the table shows how
much of the lead is the memory layout alone.

The process keeps freed memory, as `detector train` / `predict` do on the CPU
(`train.keep_freed_memory`, detector/engine/allocator.py), for all three models alike;
--system-malloc leaves glibc's default, where every large allocation faults in fresh pages.

    python tools/bench_model.py [--config configs/lite0.yaml] [--images N] [--iters N] [--threads N] [--system-malloc]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detector import build_model, load_config
from detector.data.datasets import resolve_data_path
from detector.engine.allocator import keep_freed_memory
from detector.modeling.backbones.base import FrozenBatchNorm2d
from detector.modeling.transform import DetectionTransform
from detector.data import read_image
from bench_kernels import _status_kib as status_kib  # the one /proc/self/status reader of the benchmarks

DATA = "${DETECTOR_DATA}/raccoon"  # the raccoon val photos: `detector datasets get raccoon`


def with_torchvision_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose frozen BatchNorms are torchvision's own FrozenBatchNorm2d (same
    buffers): the backbone architecture as torchvision would run it."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FrozenBatchNorm2d):
                replacement = FrozenBatchNorm2d.__base__(child.weight.numel(), eps=child.eps)
                replacement.load_state_dict(child.state_dict())
                setattr(parent, name, replacement)
    return module


def torchvision_twin(ours) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN with our settings and a copy of our weights, around a copy of our
    backbone architecture built from torchvision's layers (FrozenBatchNorm2d) and the same box
    head: detection code, norm layers and everything else are torchvision's."""
    rpn, roi, transform = ours.rpn, ours.roi_heads, ours.transform
    anchors = AnchorGenerator(
        tuple(tuple(s) for s in rpn.anchor_generator.sizes), tuple(tuple(r) for r in rpn.anchor_generator.aspect_ratios)
    )
    model = TorchvisionFasterRCNN(
        with_torchvision_norms(ours.backbone),
        min_size=transform.min_size,
        max_size=transform.max_size,
        image_mean=list(transform.image_mean),
        image_std=list(transform.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ours.backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=len(rpn.head.conv)),
        # Every RPN and ROI-head setting of ours, so a --set changes both models alike.
        rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"], rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"], rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
        rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.fg_iou_thresh, rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image, rpn_positive_fraction=rpn.positive_fraction,
        rpn_score_thresh=rpn.score_thresh, box_score_thresh=roi.score_thresh, box_nms_thresh=roi.nms_thresh,
        box_detections_per_img=roi.detections_per_img, box_fg_iou_thresh=roi.fg_iou_thresh,
        box_bg_iou_thresh=roi.bg_iou_thresh, box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction, bbox_reg_weights=roi.box_coder.weights,
        box_roi_pool=MultiScaleRoIAlign(roi.box_roi_pool.featmap_names, roi.box_roi_pool.output_size, roi.box_roi_pool.sampling_ratio),
        box_head=copy.deepcopy(ours.roi_heads.box_head),
        box_predictor=FastRCNNPredictor(ours.roi_heads.box_head.out_features, ours.num_classes + 1),
    )
    model.load_state_dict(ours.state_dict())
    model.transform.torch_choice = lambda sizes: sizes[-1]  # same (single) training size, no extra RNG draw
    return model


def load_samples(count: int):
    folder = resolve_data_path(DATA)  # an error naming the command when it is not installed
    data = json.loads((folder / "coco_val.json").read_text())
    images, targets = [], []
    for image in data["images"][:count]:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]]
        images.append(torch.from_numpy(read_image(folder / image["file_name"])).permute(2, 0, 1).float() / 255)
        targets.append({
            "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
        })
    return images, targets


def box_difference(ours, theirs, images) -> tuple[bool, float]:
    """Whether both models give the same labels (so the same detection counts) on `images`, and
    the largest |box difference| in pixels over the images where the counts agree. Each image
    runs alone (torchvision pads a batch to its largest image, which changes the others), and
    an image that our exact resize takes to another size than torchvision's doubles (one pixel,
    modeling/geometry.py) is left out."""
    ours.eval(), theirs.eval()
    pairs = []
    with torch.no_grad():
        for image in images:
            if resized_shape(theirs, image) == resized_shape(ours, image):
                pairs.append((ours([image])[0], theirs([image])[0]))
    same = bool(pairs) and all(torch.equal(a["labels"], b["labels"]) for a, b in pairs)
    largest = max(((a["boxes"] - b["boxes"]).abs().max().item() for a, b in pairs
                   if a["boxes"].shape == b["boxes"].shape and len(a["boxes"])), default=0.0)
    return same, largest


def resized_shape(model, image) -> tuple[int, int]:
    """The size `model`'s transform resizes `image` to (ours, or torchvision's)."""
    resized = model.transform.resize(image) if isinstance(model.transform, DetectionTransform) else \
        model.transform.resize(image, None)[0]
    return tuple(resized.shape[-2:])


def time_inference(model, images) -> float:
    model.eval()
    times = []
    with torch.no_grad():
        model(images[:1])  # warm-up
        for image in images:
            start = time.perf_counter()
            model([image])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgd(model) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def training_step(model, optimizer, images, targets, step: int) -> None:
    """One SGD step on photos 2 * step and 2 * step + 1 (cycling through them)."""
    batch = [(step * 2 + k) % len(images) for k in range(2)]
    losses = model([images[i] for i in batch], [targets[i] for i in batch])
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


def time_training(model, images, targets, iters: int) -> float:
    model.train()
    optimizer = sgd(model)
    times = []
    for step in range(iters + 1):
        start = time.perf_counter()
        training_step(model, optimizer, images, targets, step)
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_models(args) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    config = load_config(args.config, ["model.num_classes=1", *args.set])
    ours = build_model(config)
    theirs = torchvision_twin(ours)  # before ours changes layout: the twin starts NCHW, as torchvision ships
    by_hand = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    layout = torch.channels_last if config.train.channels_last else torch.preserve_format
    return {"ours": ours.to(memory_format=layout), "torchvision": theirs, "torchvision NHWC": by_hand}


def training_peak_mb(name: str, args) -> float:
    """Peak RSS growth of the first training step, in a fresh process (Linux /proc): weights,
    photos and the model are loaded first; what the step adds (activations, gradients, momentum,
    oneDNN's buffers) is the measure."""
    command = [sys.executable, __file__, "--config", args.config, "--images", str(args.images),
               "--peak-memory-of", name, "--set", *args.set]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.system_malloc:
        command.append("--system-malloc")
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def print_peak_memory(name: str, args) -> None:
    images, targets = load_samples(args.images)
    model = build_models(args)[name].train()
    optimizer = sgd(model)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the RSS of now
    before = status_kib("VmRSS")
    training_step(model, optimizer, images, targets, 0)
    print((status_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/lite0.yaml")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (alternating order); medians reported")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--system-malloc", action="store_true",
                        help="glibc's default allocator, not the freed memory kept as detector keeps it")
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)  # the fresh process of training_peak_mb
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.system_malloc and keep_freed_memory()
    if args.peak_memory_of:
        return print_peak_memory(args.peak_memory_of, args)
    images, targets = load_samples(args.images)
    models = build_models(args)

    # Same detections: in float32 the boxes move by rounding (a different summation order in
    # the folded or channels-last convolutions; torchvision NHWC against torchvision NCHW shows
    # the size of that), in float64 the two computations must agree to far below 1e-4 px.
    same32, difference32 = box_difference(models["ours"], models["torchvision"], images[:3])
    same64, difference64 = box_difference(copy.deepcopy(models["ours"]).double(), copy.deepcopy(models["torchvision"]).double(),
                                          [image.double() for image in images[:3]])
    layout_only = box_difference(models["torchvision NHWC"], models["torchvision"], images[:3])[1]

    # Interleave the models, rotating which goes first (a later one runs on warmer caches), and
    # take each one's median over the rounds: a busy neighbour or the order skews none of them.
    names = list(models)
    inference = {name: [] for name in names}
    training = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names[round_index % 3:] + names[:round_index % 3]:
            inference[name].append(time_inference(models[name], images))
            torch.manual_seed(1)
            training[name].append(time_training(models[name], images, targets, args.iters))
    rows = [(what, {name: statistics.median(values) for name, values in results.items()})
            for what, results in (("inference s/image", inference), ("training s/iter (batch 2)", training))]
    rows.append(("training step peak MB", {name: training_peak_mb(name, args) for name in names}))

    print(f"\nconfig {args.config} {' '.join(args.set)} | torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads | {args.images} raccoon val photos | "
          f"{'freed memory kept (train.keep_freed_memory)' if kept else 'system malloc'}")
    print(f"same detections (labels): {same32 and same64}; largest box difference float32 {difference32:.1e} px "
          f"(torchvision NHWC vs NCHW alone: {layout_only:.1e} px), float64 {difference64:.1e} px")
    print(f"{'measure':<28}{'ours':>10}{'torchvision':>13}{'ratio':>8}{'torchvision NHWC':>18}{'ratio':>8}")
    for what, value in rows:
        print(f"{what:<28}{value['ours']:>10.3f}{value['torchvision']:>13.3f}{value['torchvision'] / value['ours']:>8.2f}"
              f"{value['torchvision NHWC']:>18.3f}{value['torchvision NHWC'] / value['ours']:>8.2f}")


if __name__ == "__main__":
    main()
