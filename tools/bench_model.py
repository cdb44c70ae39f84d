"""Our Faster R-CNN against torchvision's FasterRCNN built from the same backbone weights and
settings, on this machine: inference seconds per image (median over real photos) and training
seconds per iteration (batch 2). Prints a table; also checks both give the same detections.

    python tools/bench_model.py [--config configs/lite0.yaml] [--images N] [--iters N] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detector import build_model, load_config
from detector.data.datasets import resolve_data_path
from detector.modeling.backbones.base import FrozenBatchNorm2d
from detector.data import read_image

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


def time_training(model, images, targets, iters: int) -> float:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    times = []
    for step in range(iters + 1):
        batch = [(step * 2 + k) % len(images) for k in range(2)]
        start = time.perf_counter()
        losses = model([images[i] for i in batch], [targets[i] for i in batch])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/lite0.yaml")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (alternating order); medians reported")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, targets = load_samples(args.images)

    torch.manual_seed(0)
    ours = build_model(load_config(args.config, ["model.num_classes=1", *args.set]))
    theirs = torchvision_twin(ours)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        pairs = list(zip(ours(images[:3]), theirs(images[:3])))
    same = all(torch.equal(a["labels"], b["labels"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
               for a, b in pairs)
    box_difference = max(((a["boxes"] - b["boxes"]).abs().max().item() for a, b in pairs
                          if a["boxes"].shape == b["boxes"].shape and len(a["boxes"])), default=float("nan"))

    rows = []
    # Interleave the two models, alternating which goes first (the second runs on warmer caches),
    # and take each one's median over the rounds: a busy neighbour or the order skews neither.
    inference = {"ours": [], "torchvision": []}
    training = {"ours": [], "torchvision": []}
    models = [("ours", ours), ("torchvision", theirs)]
    for round_index in range(args.rounds):
        for name, model in models if round_index % 2 == 0 else models[::-1]:
            inference[name].append(time_inference(model, images))
            torch.manual_seed(1)
            training[name].append(time_training(model, images, targets, args.iters))
    for what, results in (("inference s/image", inference), ("training s/iter (batch 2)", training)):
        ours_t, theirs_t = statistics.median(results["ours"]), statistics.median(results["torchvision"])
        rows.append((what, ours_t, theirs_t, theirs_t / ours_t))

    print(f"\nconfig {args.config} {' '.join(args.set)} | torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads | {args.images} raccoon val photos | same detections: {same} "
          f"(largest box difference {box_difference:.1e} px)")
    print(f"{'measure':<28}{'ours':>10}{'torchvision':>14}{'ratio (tv/ours)':>18}")
    for what, ours_t, theirs_t, ratio in rows:
        print(f"{what:<28}{ours_t:>10.3f}{theirs_t:>14.3f}{ratio:>18.2f}")


if __name__ == "__main__":
    main()
