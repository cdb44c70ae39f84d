"""Inference speed of the deployment paths on this machine: seconds per image (median over real
photos) for our PyTorch eager model, our ONNX export in ONNX Runtime (and OpenVINO when
installed), torchvision's FasterRCNN eager with the same backbone, weights and settings
(tools/bench_model.py's twin), and torchvision's own ONNX export (batch 1, fixed size: the only
export of it that runs). Default Lite0 model at the raccoon recipe's sizes, batch 1 and 4.
The eager models run as `detector predict` runs ours: channels-last (ours) and with freed memory
kept (train.keep_freed_memory, for the whole process: torchvision's model gets it too).

    python tools/bench_export.py [--config configs/raccoon.yaml] [--images 8] [--rounds 3] [--threads N]

Photos: ../shared/data/raccoon val when present, else scikit-image's. A batch of 4 is 4 photos
resized to one size (the export takes one size per batch). Weights: pretrained backbone, heads
at random (speed does not depend on them); every path gets the same weights.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import torchvision_twin  # noqa: E402

from detector import build_model, load_config  # noqa: E402
from detector.config import config_to_dict  # noqa: E402
from detector.engine.checkpoint import save_checkpoint  # noqa: E402
from detector.data import read_image  # noqa: E402
from detector.data.datasets import data_home, is_installed  # noqa: E402


def load_photos(count: int) -> tuple[list[np.ndarray], str]:
    """The installed raccoon set's val photos (`detector datasets get raccoon`), else scikit-image's."""
    folder = data_home() / "raccoon"
    if is_installed("raccoon", data_home()):
        names = [image["file_name"] for image in json.loads((folder / "coco_val.json").read_text())["images"][:count]]
        return [read_image(folder / name) for name in names], f"{len(names)} raccoon val photos"
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
              data.hubble_deep_field(), data.stereo_motorcycle()[0]][:count]
    return photos, f"{len(photos)} scikit-image photos"


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def run_export(predictor, batch: list[np.ndarray]) -> None:
    predictor.run(np.stack([to_tensor(image).numpy() for image in batch]))


def median_seconds_per_image(run, batches: list[list[np.ndarray]]) -> float:
    """Median over batches of (seconds for the batch / its size), after one warm-up batch."""
    run(batches[0])
    times = []
    for batch in batches:
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) / len(batch))
    return statistics.median(times)


def batches_of(photos: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    if size == 1:
        return [[photo] for photo in photos]
    groups = [photos[i:i + size] for i in range(0, len(photos) - size + 1, size)] or [photos[:size]]
    # One size per batch (the export's input is one tensor): every photo of a group at the first's size.
    return [[cv2.resize(p, (group[0].shape[1], group[0].shape[0])) for p in group] for group in groups]


def torchvision_onnx(theirs, size: tuple[int, int], folder: Path):
    """torchvision's own export at batch 1 and a fixed size, run by ONNX Runtime; (run, note)."""
    import onnxruntime as ort

    path = folder / "torchvision.onnx"
    example = [torch.rand(3, *size)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(theirs, (example,), str(path), opset_version=17, dynamo=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - reported in the table, not fatal
        return None, f"export failed: {' '.join(str(error).split())[:120]}"
    name = session.get_inputs()[0].name

    def run(batch):
        for image in batch:
            session.run(None, {name: to_tensor(cv2.resize(image, (size[1], size[0]))).numpy()})
    return run, f"fixed {size[0]}x{size[1]}, photos resized to it"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/raccoon.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all paths (interleaved); medians reported")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from detector.engine.allocator import keep_freed_memory
    from detector.export.onnx import export_onnx
    from detector.inference.exported import OnnxPredictor

    keep_freed_memory()

    photos, source = load_photos(args.images)
    torch.manual_seed(0)
    config = load_config(args.config, ["model.num_classes=1"])
    ours = build_model(config).eval()
    theirs = torchvision_twin(ours).eval()
    folder = Path(tempfile.mkdtemp(prefix="bench_export-"))
    checkpoint = folder / "model.pt"
    save_checkpoint({"model": ours.state_dict(), "config": config_to_dict(config),
                     "categories": {"ids": [1], "names": ["object"]}}, checkpoint)
    onnx_path = export_onnx(checkpoint, folder / "model.onnx")
    ours = ours.to(memory_format=torch.channels_last)  # as Predictor runs it (after the twin took the NCHW weights)

    def eager(model):
        def run(batch):
            with torch.no_grad():
                model([to_tensor(image) for image in batch])
        return run

    onnx_runtime = OnnxPredictor(onnx_path, threads=args.threads)
    paths = {"ours, PyTorch eager": eager(ours),
             "ours, ONNX Runtime": lambda batch: run_export(onnx_runtime, batch),
             "torchvision eager (same backbone/settings)": eager(theirs)}
    notes = {}
    for precision in ("f32", "bf16"):  # f32 is the default; bf16 is asked for (and ran only where the CPU has it)
        name = f"ours, OpenVINO {precision}"
        try:
            openvino = OnnxPredictor(onnx_path, backend="openvino", threads=args.threads, precision=precision)
            paths[name] = lambda batch, openvino=openvino: run_export(openvino, batch)
            notes[name] = f"ran at {openvino.runner.precision}"
        except Exception as error:  # noqa: BLE001 - not installed (or no CPU plugin): a row that says so
            notes[name] = f"n/a: {error}"
    first = photos[0]
    resize = min(config.model.transform.min_size / min(first.shape[:2]), config.model.transform.max_size / max(first.shape[:2]))
    tv_run, tv_note = torchvision_onnx(theirs, first.shape[:2], folder)
    if tv_run is not None:
        paths["torchvision's ONNX export, ONNX Runtime"] = tv_run
    notes["torchvision's ONNX export, ONNX Runtime"] = tv_note + " (its input is a list: batch 1 only)"

    results = {name: {1: [], 4: []} for name in paths}
    for round_index in range(args.rounds):
        order = list(paths) if round_index % 2 == 0 else list(paths)[::-1]
        for name in order:
            for batch_size in (1, 4):
                if batch_size == 4 and name.startswith("torchvision's ONNX"):
                    continue
                results[name][batch_size].append(median_seconds_per_image(paths[name], batches_of(photos, batch_size)))

    baseline = statistics.median(results["torchvision eager (same backbone/settings)"][1])
    print(f"\nconfig {args.config} (resize {config.model.transform.min_size}/{config.model.transform.max_size}, "
          f"first photo x{resize:.2f}) | torch {torch.__version__} | {torch.get_num_threads()} threads | {source}")
    print(f"{'path':<44}{'batch 1 s/img':>14}{'batch 4 s/img':>14}{'tv eager / this (b1)':>22}")
    for name in paths:
        b1 = statistics.median(results[name][1])
        b4 = f"{statistics.median(results[name][4]):.3f}" if results[name][4] else "-"
        print(f"{name:<44}{b1:>14.3f}{b4:>14}{baseline / b1:>22.2f}")
    for name, note in notes.items():
        print(f"  {name}: {note}")


if __name__ == "__main__":
    main()
