"""`detector export --int8`: the FP32 export with its backbone quantized to INT8, behind an accuracy gate.

The recipe that works for detectors (onnxruntime #14233, onnx/models #587): static post-training
quantization in QDQ form with onnxruntime.quantization, weights int8 per output channel,
activations uint8 per tensor (MinMax ranges over real training images, calibration.py). Only the
backbone (and its FPN) is quantized; the RPN head, the ROI head and all post-processing (box
decoding, NMS, top-k) stay FP32: scores and box deltas need the precision. Backbone layers that
lose the most accuracy when quantized can stay FP32 too (KEEP_FP32, --keep-fp32), measured by
tools/int8_sensitivity.py (docs/export.md "INT8 on the CPU": on Lite0 none had to).

The gate (accuracy_gate.py) evaluates the FP32 and the INT8 file on the config's val set and
refuses to write the INT8 file when AP50 drops by more than max_ap_drop, unless forced. The file
keeps the FP32 export's inputs, outputs and metadata, so every command runs it like any .onnx, and
adds "precision": "int8" and "int8": how it was made (calibration, gate, layers left in FP32).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from detector.dependencies import require
from detector.errors import ConfigError, ExportError
from detector.export.calibration import (DEFAULT_CALIBRATION_IMAGES, SAMPLE_SEED, calibration_dataset,
                                         calibration_reader, pick_images)
from detector.export.onnx import DEFAULT_OPSET

# ONNX node names carry the module path (the tracer's scopes): what lies under these is quantized.
QUANTIZED_SCOPES = ("/backbone/",)
# Op types whose inputs and outputs are calibrated and quantized: convolutions, the ReLU6 after
# them (folded into the quantized range), residual additions, FPN upsampling and pooling.
QUANTIZED_OP_TYPES = ("Conv", "Clip", "Relu", "Add", "Resize", "MaxPool")
# Backbone layers (module paths) left in FP32 by default: see tools/int8_sensitivity.py.
KEEP_FP32: tuple[str, ...] = ()
DEFAULT_MAX_AP_DROP = 0.01


@dataclass
class Int8Export:
    """What `export_int8` did: the file written (None when the gate refused), the gate's numbers,
    and the layers: quantized, and left in FP32 inside the quantized scope."""
    path: Path | None
    fp32: dict[str, float]
    int8: dict[str, float]
    max_ap_drop: float
    passed: bool
    forced: bool
    quantized_layers: list[str]
    fp32_layers: list[str]
    calibration_images: int

    @property
    def ap50_drop(self) -> float:
        return self.fp32["AP50"] - self.int8["AP50"]


def layer_of(node_name: str) -> str:
    """The module path of an ONNX node traced from it: "/backbone/body/stage2/stage2.0/depthwise/Conv"
    -> "backbone.body.stage2.0.depthwise" (the tracer writes a child of a Sequential as "stage2.0")."""
    parts = node_name.strip("/").split("/")[:-1]
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def backbone_nodes(proto) -> list:
    """The nodes of the quantized scope with a quantized op type, in graph order."""
    return [node for node in proto.graph.node
            if node.name.startswith(QUANTIZED_SCOPES) and node.op_type in QUANTIZED_OP_TYPES]


def quantized_conv_layers(proto, keep_fp32: Sequence[str]) -> tuple[list[str], list[str]]:
    """(layers quantized, layers kept FP32) among the convolutions of the quantized scope."""
    layers = [layer_of(node.name) for node in backbone_nodes(proto) if node.op_type == "Conv"]
    kept = [layer for layer in layers if is_kept(layer, keep_fp32)]
    return [layer for layer in layers if layer not in kept], kept


def is_kept(layer: str, keep_fp32: Sequence[str]) -> bool:
    """A layer stays FP32 when it is, or lies inside, one of `keep_fp32` (module paths)."""
    return any(layer == kept or layer.startswith(kept + ".") for kept in keep_fp32)


def check_kept_layers(proto, keep_fp32: Sequence[str]) -> None:
    layers = [layer_of(node.name) for node in backbone_nodes(proto)]
    for kept in keep_fp32:
        if not any(is_kept(layer, [kept]) for layer in layers):
            examples = ", ".join(dict.fromkeys(layer for layer in layers if layer))[:200]
            raise ExportError(f"--keep-fp32 {kept}: no quantized layer of the backbone has that module path "
                              f"(they are e.g. {examples})")


def quantize_backbone(fp32_path: Path, out: Path, reader, keep_fp32: Sequence[str],
                      calibration_cache: Path | None = None) -> tuple[list[str], list[str]]:
    """Static QDQ quantization of `fp32_path`'s backbone into `out`, calibrated on `reader`.
    Returns (quantized conv layers, conv layers kept FP32). `calibration_cache` (onnxruntime >=
    1.32) keeps the ranges in a file and reuses them: one calibration for many variants."""
    onnx = require("onnx", "export", "INT8 export")
    quantization = require("onnxruntime.quantization", "export", "INT8 export")
    proto = onnx.load(str(fp32_path))
    check_kept_layers(proto, keep_fp32)
    nodes = [node.name for node in backbone_nodes(proto) if not is_kept(layer_of(node.name), keep_fp32)]
    with quiet_root_logger():
        quantize_static(quantization, fp32_path, out, reader, nodes, calibration_cache)
    return quantized_conv_layers(proto, keep_fp32)


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization advises "pre-processing" through the root logger on every call,
    whatever the model; the CLI prints its own lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_static(quantization, fp32_path: Path, out: Path, reader, nodes: list[str],
                    calibration_cache: Path | None) -> None:
    quantization.quantize_static(
        str(fp32_path), str(out), reader, quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=nodes, per_channel=True,
        # uint8 activations x int8 weights: the pair x86's VNNI (and AVX2's) integer dot products take.
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        **({"calibration_cache_path": str(calibration_cache)} if calibration_cache is not None else {}))


def export_int8(weights: str | Path, out: str | Path | None = None, calibration: str | Path | None = None,
                calibration_images: int | None = DEFAULT_CALIBRATION_IMAGES, max_ap_drop: float = DEFAULT_MAX_AP_DROP,
                force: bool = False, keep_fp32: Sequence[str] = KEEP_FP32, opset: int = DEFAULT_OPSET,
                overrides: Sequence[str] = (), log: Callable[[str], None] = lambda line: None) -> Int8Export:
    """Export checkpoint `weights` with an INT8 backbone to `out` (default: beside it, `.int8.onnx`).

    Calibrates on `calibration_images` training images of `calibration` (a config path; default
    the checkpoint's own config; None = all of them), evaluates FP32 and INT8 on that config's
    val set and writes the file only when AP50 drops by at most `max_ap_drop` or `force`.
    Returns what was measured either way; `path` is None when the gate refused."""
    from detector import load_config
    from detector.config import config_from_dict
    from detector.engine.checkpoint import load_checkpoint
    from detector.export.accuracy_gate import evaluate_file, val_dataset
    from detector.export.onnx import export_onnx

    weights = Path(weights)
    out = Path(out) if out is not None else weights.with_suffix(".int8.onnx")
    if calibration is not None:
        config, source = load_config(calibration), str(calibration)
    else:
        config, source = config_from_dict(load_checkpoint(weights)["config"], str(weights)), f"{weights}'s config"
    if config.data.val is None:
        raise ConfigError(f"{source}: no data.val, which the INT8 accuracy gate evaluates FP32 and INT8 on")
    train = calibration_dataset(config, source)
    indices = pick_images(train, calibration_images, source)
    val = val_dataset(config, weights)

    with tempfile.TemporaryDirectory(prefix="detector-int8-") as folder:
        folder = Path(folder)
        fp32_path = export_onnx(weights, folder / "fp32.onnx", opset=opset, overrides=overrides)
        log(f"calibrating on {len(indices)} of the {len(train)} training images of {source}")
        int8_path = folder / "int8.onnx"
        quantized, kept = quantize_backbone(fp32_path, int8_path, calibration_reader(train, indices), keep_fp32)
        log(f"evaluating FP32 and INT8 on the {len(val)} val images")
        fp32 = evaluate_file(fp32_path, val, folder / "fp32_eval", config)
        int8 = evaluate_file(int8_path, val, folder / "int8_eval", config)
        result = Int8Export(None, fp32, int8, max_ap_drop, passed=fp32["AP50"] - int8["AP50"] <= max_ap_drop,
                            forced=force, quantized_layers=quantized, fp32_layers=kept,
                            calibration_images=len(indices))
        if not (result.passed or force):
            return result
        write_int8_metadata(int8_path, result, config, source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(int8_path), out)
        result.path = out
    return result


def write_int8_metadata(path: Path, result: Int8Export, config, source: str) -> None:
    """Say in the file that it is INT8 and how it was made (the FP32 export's keys stay)."""
    onnx = require("onnx", "export", "INT8 export")
    from detector.config import config_to_dict

    proto = onnx.load(str(path))
    data = config_to_dict(config)["data"]
    record = {
        "scheme": "static QDQ (onnxruntime.quantization): weights int8 per channel, activations uint8 per tensor, "
                  "MinMax calibration; RPN head, ROI head and post-processing FP32",
        "calibration": {"config": source, "dataset": data["train"], "images": result.calibration_images,
                        "sample_seed": SAMPLE_SEED},
        "gate": {"dataset": data["val"], "fp32": result.fp32, "int8": result.int8, "max_ap50_drop": result.max_ap_drop,
                 "passed": result.passed, "forced": result.forced},
        "quantized_layers": result.quantized_layers,
        "fp32_layers": result.fp32_layers,
    }
    for key, value in (("precision", "int8"), ("int8", record)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


def describe(result: Int8Export) -> list[str]:
    """The gate's verdict and the layers, as the CLI prints them."""
    lines = [f"FP32  AP {result.fp32['AP']:.4f}  AP50 {result.fp32['AP50']:.4f}",
             f"INT8  AP {result.int8['AP']:.4f}  AP50 {result.int8['AP50']:.4f}  "
             f"(AP50 drop {result.ap50_drop:+.4f}, allowed {result.max_ap_drop})",
             f"quantized: {len(result.quantized_layers)} backbone convolutions; left in FP32: the RPN head, "
             f"the ROI head and post-processing"
             + (f", and {', '.join(result.fp32_layers)}" if result.fp32_layers else "")]
    return lines

