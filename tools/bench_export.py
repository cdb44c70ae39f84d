"""Inference speed of the deployment paths on this machine: seconds per image (median over real
photos) for our PyTorch eager model, our ONNX export in ONNX Runtime (and OpenVINO when
installed), torchvision's FasterRCNN eager with the same backbone, weights and settings
(tools/bench_model.py's twin), and torchvision's own ONNX export (batch 1, fixed size: the only
export of it that runs). Default Lite0 model at the raccoon recipe's sizes, batch 1 and 4.
The eager models run as `detector predict` runs ours: channels-last (ours) and with freed memory
kept (train.keep_freed_memory, for the whole process: torchvision's model gets it too).

    python tools/bench_export.py [--config configs/raccoon.yaml] [--images 8] [--rounds 3] [--threads N]
                                 [--weights CHECKPOINT] [--int8 [FILE]] [--ap]

Photos: the installed raccoon val set when present, else scikit-image's. A batch of 4 is 4 photos
resized to one size (the export takes one size per batch). Weights: pretrained backbone, heads
at random (speed does not depend on them), or a trained --weights; every path gets the same weights.
--int8 adds INT8 rows (ONNX Runtime and OpenVINO): FILE, or `detector export --int8` of --weights
(calibrated on its config's training set, gate forced so the rows always appear); their AP is the
gate's, from the file's metadata. --ap evaluates every exported path on the config's val set.
The first line says which int8 / bf16 instructions this CPU has: INT8 pays where it has VNNI or AMX.
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


def cpu_instructions() -> str:
    """The int8 / bf16 dot-product instructions of this CPU (Linux /proc/cpuinfo flags)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "CPU flags unknown (no /proc/cpuinfo)"
    names = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
    return "CPU: " + ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in names)


def int8_file(args, checkpoint: Path, folder: Path) -> tuple[Path, dict]:
    """(the INT8 file, its metadata's record): --int8 FILE, or exported here from the checkpoint."""
    import onnx

    from detector.export.int8 import export_int8

    if args.int8 != "export":
        path = Path(args.int8)
    else:
        result = export_int8(checkpoint, folder / "model.int8.onnx", force=True, log=print)
        print(f"INT8 gate: FP32 AP50 {result.fp32['AP50']:.4f}, INT8 AP50 {result.int8['AP50']:.4f}"
              f"{'' if result.passed else ' (failed; forced for the bench)'}")
        path = result.path
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return path, json.loads(metadata.get("int8", "{}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/raccoon.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all paths (interleaved); medians reported")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", default=None, help="trained checkpoint (its config) instead of random heads")
    parser.add_argument("--int8", nargs="?", const="export", default=None, metavar="FILE",
                        help="INT8 rows: FILE, or exported from --weights")
    parser.add_argument("--ap", action="store_true", help="COCO AP of every exported path on the config's val set")
    args = parser.parse_args()
    if args.int8 == "export" and not args.weights:
        parser.error("--int8 without FILE exports the INT8 file from --weights (trained weights: AP means something)")
    if args.int8 not in (None, "export") and not Path(args.int8).is_file():
        parser.error(f"--int8 {args.int8}: no such file (leave FILE out to export one from --weights)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from detector.engine.allocator import keep_freed_memory
    from detector.export.onnx import export_onnx
    from detector.inference.exported import OnnxPredictor

    keep_freed_memory()

    print(cpu_instructions())
    photos, source = load_photos(args.images)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench_export-"))
    if args.weights:
        from detector.config import config_from_dict
        from detector.engine.checkpoint import load_checkpoint

        checkpoint = Path(args.weights)
        state = load_checkpoint(checkpoint)
        config = config_from_dict(state["config"], str(checkpoint))
        config.model.backbone.pretrained = False  # every weight comes from the checkpoint
        ours = build_model(config).eval()
        ours.load_state_dict(state["model"])
        args.config = f"{checkpoint}'s config"
    else:
        config = load_config(args.config, ["model.num_classes=1"])
        ours = build_model(config).eval()
        checkpoint = folder / "model.pt"
        save_checkpoint({"model": ours.state_dict(), "config": config_to_dict(config),
                         "categories": {"ids": [1], "names": ["object"]}}, checkpoint)
    theirs = torchvision_twin(ours).eval()
    onnx_path = export_onnx(checkpoint, folder / "model.onnx")
    int8_path, int8_record = int8_file(args, checkpoint, folder) if args.int8 else (None, {})
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
    notes, files = {}, {"ours, ONNX Runtime": (onnx_path, "onnxruntime", "f32")}
    if int8_path is not None:
        int8_runtime = OnnxPredictor(int8_path, threads=args.threads)
        paths["ours INT8, ONNX Runtime"] = lambda batch: run_export(int8_runtime, batch)
        files["ours INT8, ONNX Runtime"] = (int8_path, "onnxruntime", "f32")
    variants = [("ours, OpenVINO f32", onnx_path, "f32"), ("ours, OpenVINO bf16", onnx_path, "bf16")]
    if int8_path is not None:
        variants.append(("ours INT8, OpenVINO", int8_path, "f32"))
    for name, path, precision in variants:  # bf16 is asked for (and ran only where the CPU has it)
        try:
            openvino = OnnxPredictor(path, backend="openvino", threads=args.threads, precision=precision)
            paths[name] = lambda batch, openvino=openvino: run_export(openvino, batch)
            files[name] = (path, "openvino", precision)
            quantized = " (its quantized layers in int8)" if "INT8" in name else ""
            notes[name] = f"ran at {openvino.runner.precision}{quantized}"
        except Exception as error:  # noqa: BLE001 - not installed (or no CPU plugin): a row that says so
            notes[name] = f"n/a: {' '.join(str(error).split())[:160]}"
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

    accuracy = accuracy_column(args, config, checkpoint, files, int8_record, folder)
    baseline = statistics.median(results["torchvision eager (same backbone/settings)"][1])
    reference = {size: statistics.median(results["ours, ONNX Runtime"][size]) for size in (1, 4)}
    print(f"\nconfig {args.config} (resize {config.model.transform.min_size}/{config.model.transform.max_size}, "
          f"first photo x{resize:.2f}) | torch {torch.__version__} | {torch.get_num_threads()} threads | {source}")
    print(f"{'path':<44}{'batch 1 s/img':>14}{'batch 4 s/img':>14}{'tv eager / this (b1)':>22}"
          f"{'ORT f32 / this (b1, b4)':>25}  AP / AP50")
    for name in paths:
        b1 = statistics.median(results[name][1])
        b4 = statistics.median(results[name][4]) if results[name][4] else None
        versus = f"{reference[1] / b1:.2f}, {reference[4] / b4:.2f}" if b4 else f"{reference[1] / b1:.2f}, -"
        print(f"{name:<44}{b1:>14.3f}{f'{b4:.3f}' if b4 else '-':>14}{baseline / b1:>22.2f}{versus:>25}  "
              f"{accuracy.get(name, '-')}")
    for name, note in notes.items():
        print(f"  {name}: {note}")
    if int8_record:
        kept = ", ".join(int8_record.get("fp32_layers", [])) or "none"
        print(f"  INT8 file {int8_path}: backbone convolutions left in FP32: {kept}; AP of the ONNX Runtime rows "
              f"from its gate ({int8_record['gate']['dataset'].get('annotations') or 'val set'})")


def accuracy_column(args, config, checkpoint: Path, files: dict, int8_record: dict, folder: Path) -> dict[str, str]:
    """"AP / AP50" per path: the INT8 file's gate for the ONNX Runtime rows, and with --ap every
    exported path evaluated on the config's val set."""
    column = {}
    if int8_record:
        gate = int8_record["gate"]
        column["ours, ONNX Runtime"] = f"{gate['fp32']['AP']:.4f} / {gate['fp32']['AP50']:.4f} (gate)"
        column["ours INT8, ONNX Runtime"] = f"{gate['int8']['AP']:.4f} / {gate['int8']['AP50']:.4f} (gate)"
    if args.ap:
        from detector.export.accuracy_gate import evaluate_file, val_dataset

        val = val_dataset(config, checkpoint)
        for name, (path, backend, precision) in files.items():
            metrics = evaluate_file(path, val, folder / "eval", config, backend=backend, precision=precision)
            column[name] = f"{metrics['AP']:.4f} / {metrics['AP50']:.4f}"
    return column


if __name__ == "__main__":
    main()
