"""`detector export`: a checkpoint of `detector train` -> one ONNX file that runs anywhere.

The graph is graph.ExportableFasterRCNN traced by torch's TorchScript-based exporter
(`torch.onnx.export(..., dynamo=False)`), standard ONNX ops only (NonMaxSuppression, RoiAlign
in torchvision's "output_half_pixel" mode = aligned=False as our pooler, TopK, Resize, ...):

  input   images          float32 [batch, 3, height, width], RGB in 0..1, batch/height/width dynamic
  output  boxes           float32 [batch, D, 4]  xyxy in input pixels
          scores          float32 [batch, D]
          labels          int64   [batch, D]     1..K (the model's labels), -1 = padding
          num_detections  int64   [batch]        the first num_detections rows are real

D = model.roi_heads.detections_per_img. The file's metadata_props carry what a deployment needs
(METADATA_KEYS): class names and the dataset's category ids, normalization, resize rule, score
threshold and NMS settings, and the whole resolved config as JSON.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from detector.dependencies import require
from detector.errors import ExportError

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (ours is output_half_pixel) arrives in opset 16
METADATA_KEYS = ("category_ids", "category_names", "image_mean", "image_std", "min_size", "max_size",
                 "size_divisible", "score_thresh", "nms_method", "nms_thresh", "detections_per_img",
                 "input", "outputs", "config")


def export_onnx(weights: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
                overrides: Sequence[str] = (), example_batch: int = 2,
                example_size: tuple[int, int] = (480, 640)) -> Path:
    """Export checkpoint `weights` to `out` (default: beside it, `.onnx`); returns the path.
    `overrides` change test-time settings first, by the rule of every command (inference/overrides.py)."""
    onnx = require("onnx", "export", "ONNX export")
    from detector.engine.checkpoint import load_checkpoint
    from detector.export.graph import ExportableFasterRCNN
    from detector.inference.overrides import apply_test_time_overrides
    from detector.inference.predictor import Predictor

    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: RoiAlign's coordinate mode needs opset >= {MIN_OPSET}")
    weights = Path(weights)
    out = Path(out) if out is not None else weights.with_suffix(".onnx")
    predictor = Predictor.from_checkpoint(weights, device="cpu", overrides=overrides)
    model = predictor.model.to(memory_format=torch.contiguous_format).eval()
    config = apply_test_time_overrides(load_checkpoint(weights)["config"], overrides, weights)

    graph = ExportableFasterRCNN(model)
    example = torch.rand((example_batch, 3, *example_size), generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python number it meets; shapes that matter are tensors (graph.dim).
        warnings.simplefilter("ignore")
        with graph.constant_same_padding():
            torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes, do_constant_folding=True)

    proto = onnx.load(str(out))
    fold_pads_into_convolutions(proto)
    declare_output_shapes(proto, model.roi_heads.detections_per_img)
    for key, value in metadata(model, predictor.category_ids, predictor.category_names, config).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "detector Faster R-CNN; see the metadata_props for classes, preprocessing and settings"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def fold_pads_into_convolutions(proto) -> None:
    """A zero Pad with constant pads whose only reader is a Conv becomes that Conv's own pads
    (ONNX pads may differ per side): no padded copy of the feature map, in any runtime, FP32 or
    INT8. These are the backbone's TF "same" pads, constants in the graph (graph.constant_same_padding);
    ONNX Runtime alone would not fold them, neither in FP32 (the tracer's empty constant_value
    input stops it) nor in INT8 (a QuantizeLinear sits between the Pad and the Conv)."""
    graph = proto.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    folded = []
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        convs = readers.get(pad.output[0], [])
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if (len(convs) != 1 or convs[0].op_type != "Conv" or mode != b"constant" or any(pad.input[2:])
                or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in convs[0].attribute)):
            continue
        pads = constant_value(proto, pad.input[1])
        rank = None if pads is None else len(pads) // 2
        if pads is None or any(pads[:2]) or any(pads[rank:rank + 2]) or (pads < 0).any():
            continue
        conv = convs[0]
        spatial = [int(v) for v in list(pads[2:rank]) + list(pads[rank + 2:])]  # begins, then ends
        attribute = next((a for a in conv.attribute if a.name == "pads"), None)
        if attribute is None:
            attribute = conv.attribute.add()
            attribute.name, attribute.type = "pads", 7  # AttributeProto.INTS
            attribute.ints.extend([0] * len(spatial))
        attribute.ints[:] = [own + extra for own, extra in zip(attribute.ints, spatial)]
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    remove_unread_nodes(proto)


def constant_value(proto, name: str):
    """The value of tensor `name` when it is computed from constants alone (an initializer, or
    Constant nodes and ops on them), else None; evaluated with onnx's reference runtime."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    producers = {output: node for node in proto.graph.node for output in node.output}
    needed, used, pending = [], set(), [name]
    while pending:
        tensor = pending.pop()
        if tensor in used or tensor == "" or tensor in initializers:
            continue
        node = producers.get(tensor)
        if node is None:  # a graph input: not a constant
            return None
        used.update(node.output)
        needed.append(node)
        pending.extend(node.input)
    order = [node for node in proto.graph.node if node in needed]  # graph order is topological
    inputs = {i for node in order for i in node.input}
    graph = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, 0, None)],
                              [initializers[i] for i in inputs if i in initializers])
    model = helper.make_model(graph, opset_imports=proto.opset_import)
    return ReferenceEvaluator(model).run(None, {})[0]


def remove_unread_nodes(proto) -> None:
    """Drop nodes none of whose outputs is read (what a fold left behind), until none is left."""
    graph = proto.graph
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        unread = [node for node in graph.node if not any(output in read for output in node.output)]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)


def declare_output_shapes(proto, limit: int) -> None:
    """Name the outputs' sizes in the file: the tracer leaves the graph's fixed D and 4 unnamed
    (the graph's last Reshape makes them so), and deployment tools read the declared shapes."""
    shapes = {"boxes": ["batch", limit, 4], "scores": ["batch", limit], "labels": ["batch", limit],
              "num_detections": ["batch"]}
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for size, value in zip(dims, shapes[output.name]):
            if isinstance(value, str):
                size.dim_param = value
            else:
                size.dim_value = value


def metadata(model, category_ids: list[int], category_names: list[str], config: dict) -> dict[str, str]:
    """What a deployment needs beside the graph, as JSON strings (ONNX metadata values are text)."""
    transform, roi = model.transform, model.roi_heads
    values = {
        "category_ids": list(category_ids),
        "category_names": list(category_names),
        "image_mean": list(transform.image_mean),
        "image_std": list(transform.image_std),
        "min_size": transform.min_size,
        "max_size": transform.max_size,
        "size_divisible": transform.size_divisible,
        "score_thresh": roi.score_thresh,
        "nms_method": roi.nms_method,
        "nms_thresh": roi.nms_thresh,
        "detections_per_img": roi.detections_per_img,
        "input": "images float32 [batch, 3, height, width] RGB in 0..1; resize, normalization and padding "
                 "happen inside the graph",
        "outputs": "boxes [batch, D, 4] xyxy input pixels, scores [batch, D], labels [batch, D] int64 1..K "
                   "(label k is category_ids[k-1]; -1 = padding), num_detections [batch]",
        "config": config,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def signature(path: str | Path) -> list[str]:
    """The inputs and outputs of an ONNX file, one line each: name, element type, shape."""
    onnx = require("onnx", "export", "Reading an ONNX file")
    graph = onnx.load(str(path), load_external_data=False).graph
    lines = []
    for kind, values in (("input ", graph.input), ("output", graph.output)):
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or str(d.dim_value) for d in tensor.shape.dim]
            type_name = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
            lines.append(f"{kind} {value.name:<15} {type_name:<8} [{', '.join(dims)}]")
    return lines
