"""Which backbone layers lose accuracy in INT8: per-block sensitivity, measured on the val set.

Calibrates once (the ranges are cached), then quantizes one block of the backbone at a time,
everything else FP32, and scores each file with the INT8 gate's evaluation (COCO AP and AP50 on
the config's val set) and by the signal-to-quantization-noise ratio of the backbone's output
(the features the heads read) on the val images: AP on a small val set moves by chance with any
change, the SQNR says how much a block disturbs what the heads see. A last row quantizes the
whole backbone except the blocks named by --keep-fp32, to check a choice. The blocks that cost
the most are the ones to leave in FP32 (detector/export/int8.py KEEP_FP32).

    python tools/int8_sensitivity.py --weights runs/raccoon/weights/best.pt [--calibration CONFIG]
           [--calibration-images 300] [--keep-fp32 LAYER ...] [--out FOLDER]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from detector import load_config
from detector.config import config_from_dict
from detector.engine.checkpoint import load_checkpoint
from detector.export.accuracy_gate import evaluate_file, val_dataset
from detector.export.calibration import DEFAULT_CALIBRATION_IMAGES, calibration_dataset, calibration_reader, pick_images
from detector.export.int8 import backbone_nodes, layer_of, quantize_backbone
from detector.export.onnx import export_onnx


def block_of(layer: str) -> str:
    """The block a conv layer belongs to: its module path up to the stage's child
    ("backbone.body.stage2.0.depthwise" -> "backbone.body.stage2.0"; the stem is its own)."""
    return ".".join(layer.split(".")[:4])


def backbone_outputs(proto) -> list[str]:
    """The tensors the backbone hands to the heads: made by a backbone node, read by another."""
    made = {output for node in proto.graph.node if node.name.startswith("/backbone/") for output in node.output}
    return list(dict.fromkeys(name for node in proto.graph.node if not node.name.startswith("/backbone/")
                              for name in node.input if name in made))


def features(path: Path, names: list[str], images: list[np.ndarray], folder: Path) -> list[np.ndarray]:
    """The backbone outputs `names` of the file at `path` for each image, all concatenated flat."""
    import onnx.utils
    import onnxruntime as ort

    part = folder / "backbone_part.onnx"
    onnx.utils.extract_model(str(path), str(part), ["images"], names)
    session = ort.InferenceSession(str(part), providers=["CPUExecutionProvider"])
    return [np.concatenate([output.reshape(-1) for output in session.run(None, {"images": image[None]})])
            for image in images]


def sqnr_db(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    signal = sum(float(np.square(a, dtype=np.float64).sum()) for a in reference)
    noise = sum(float(np.square(a - b, dtype=np.float64).sum()) for a, b in zip(reference, other))
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--calibration", default=None, help="config (default: the checkpoint's)")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--keep-fp32", action="append", default=[], help="blocks left FP32 in the last row")
    parser.add_argument("--out", default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--no-blocks", action="store_true", help="only the whole backbone and the --keep-fp32 rows")
    args = parser.parse_args()
    weights = Path(args.weights)
    config = load_config(args.calibration) if args.calibration else config_from_dict(load_checkpoint(weights)["config"])
    folder = Path(args.out or tempfile.mkdtemp(prefix="int8_sensitivity-"))
    folder.mkdir(parents=True, exist_ok=True)
    train = calibration_dataset(config, args.calibration or str(weights))
    indices = pick_images(train, args.calibration_images, str(weights))
    val = val_dataset(config, weights)
    fp32_path = export_onnx(weights, folder / "fp32.onnx")
    import onnx

    proto = onnx.load(str(fp32_path))
    layers = [layer_of(node.name) for node in backbone_nodes(proto) if node.op_type == "Conv"]
    feature_names = backbone_outputs(proto)
    del proto
    images = [val[index][0].numpy() for index in range(min(16, len(val)))]
    reference = features(fp32_path, feature_names, images, folder)
    blocks = list(dict.fromkeys(block_of(layer) for layer in layers))
    cache = folder / "calibration.json"
    fp32 = evaluate_file(fp32_path, val, folder / "eval", config)
    print(f"{len(indices)} calibration images, {len(val)} val images (SQNR over the first {len(images)}); "
          f"FP32 AP {fp32['AP']:.4f} AP50 {fp32['AP50']:.4f}")
    print(f"{'quantized':<44}{'convs':>6}{'AP':>8}{'AP50':>8}{'dAP':>8}{'dAP50':>8}{'SQNR dB':>9}")

    def row(name: str, keep: list[str], convs: int) -> None:
        start = time.perf_counter()
        path = folder / "variant.onnx"
        quantize_backbone(fp32_path, path, calibration_reader(train, indices), keep, calibration_cache=cache)
        metrics = evaluate_file(path, val, folder / "eval", config)
        sqnr = sqnr_db(reference, features(path, feature_names, images, folder))
        print(f"{name:<44}{convs:>6}{metrics['AP']:>8.4f}{metrics['AP50']:>8.4f}{metrics['AP'] - fp32['AP']:>+8.4f}"
              f"{metrics['AP50'] - fp32['AP50']:>+8.4f}{sqnr:>9.1f}   ({time.perf_counter() - start:.0f} s)",
              flush=True)

    row("whole backbone", [], len(layers))
    for block in [] if args.no_blocks else blocks:
        row(f"only {block}", [other for other in blocks if other != block],
            sum(block_of(layer) == block for layer in layers))
    if args.keep_fp32:
        kept = [layer for layer in layers if any(layer == k or layer.startswith(k + ".") for k in args.keep_fp32)]
        row(f"all but {', '.join(args.keep_fp32)}", args.keep_fp32, len(layers) - len(kept))


if __name__ == "__main__":
    main()
