"""What keeps the FP32 graph as fast as torchvision's fixed-size export: the backbone's TF "same"
pads folded into its convolutions, and Soft-NMS picks that read a table of IoUs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from detector.export.onnx import export_onnx, fold_pads_into_convolutions
from detector.ops.soft_suppression import soft_nms_picks


def test_no_pad_is_left_in_front_of_a_convolution(lite0):
    proto = onnx.load(str(lite0[1]))
    producers = {output: node for node in proto.graph.node for output in node.output}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    # The only Pad left pads the resized batch to a multiple of 32 (by the image's size): the
    # stem's own pad went into the stem, as every strided conv's.
    assert [producers[n.input[0]].op_type for n in proto.graph.node if n.op_type == "Pad"] == ["Resize"]
    strided = {c.name: list(next(a.ints for a in c.attribute if a.name == "pads")) for c in convs
               if list(next(a.ints for a in c.attribute if a.name == "strides")) == [2, 2]}
    assert len(strided) == 4 and strided["/backbone/body/stem/Conv"] == [0, 0, 1, 1]  # TF: the odd pixel bottom/right
    assert strided["/backbone/body/stage3/stage3.0/depthwise/Conv"] == [1, 1, 2, 2]  # 5x5


def pad_then_conv(pads: list[int], constant_value: float | None = None) -> onnx.ModelProto:
    """x [1, 2, 7, 9] -> Pad(pads computed from Constant nodes) -> Conv 3x3 stride 2."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 2, 3, 3], np.random.default_rng(0).normal(size=54).tolist())
    nodes = [helper.make_node("Constant", [], ["p0"], value=helper.make_tensor("v", TensorProto.INT32, [8], pads)),
             helper.make_node("Cast", ["p0"], ["pads"], to=TensorProto.INT64)]
    pad_inputs = ["x", "pads"]
    if constant_value is not None:
        value = helper.make_tensor("c", TensorProto.FLOAT, [], [constant_value])
        nodes.append(helper.make_node("Constant", [], ["value"], value=value))
        pad_inputs.append("value")
    nodes += [helper.make_node("Pad", pad_inputs, ["padded"], mode="constant"),
              helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_folding_a_pad_into_the_convolution_gives_the_same_numbers():
    x = np.random.default_rng(1).normal(size=(1, 2, 7, 9)).astype(np.float32)
    model = pad_then_conv([0, 0, 0, 1, 0, 0, 2, 3])  # top 0, left 1, bottom 2, right 3
    expected = run(model, x)
    fold_pads_into_convolutions(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert next(a.ints for a in model.graph.node[0].attribute if a.name == "pads") == [0, 1, 2, 3]
    np.testing.assert_array_equal(run(model, x), expected)
    # Padding by another value than zero, or the batch / channel axes, cannot be a Conv's: left alone.
    for untouched in (pad_then_conv([0, 0, 0, 1, 0, 0, 2, 3], constant_value=1.0),
                      pad_then_conv([0, 1, 0, 0, 0, 0, 1, 1])):
        before = [n.op_type for n in untouched.graph.node]
        fold_pads_into_convolutions(untouched)
        assert [n.op_type for n in untouched.graph.node] == before


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_picks_from_the_iou_table_are_the_same_numbers(method):
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand((2, 3, 50, 2), generator=generator) * 100
    boxes = torch.cat((corners, corners + torch.rand((2, 3, 50, 2), generator=generator) * 40 + 1), dim=-1)
    boxes[0, 0, 7] = boxes[0, 0, 3]  # a duplicate: IoU exactly 1
    scores = torch.rand((2, 3, 50), generator=generator)
    alive = torch.rand((2, 3, 50), generator=generator) > 0.2
    options = dict(picks=30, method=method, sigma=0.5, iou_threshold=0.3, min_score=1e-3)
    computed = soft_nms_picks(boxes, scores, alive, **options)
    from_table = soft_nms_picks(boxes, scores, alive, iou_table=True, **options)
    assert torch.equal(computed[0], from_table[0]) and torch.equal(computed[1], from_table[1])


def test_a_soft_nms_pick_costs_few_nodes(lite0, tmp_path):
    """The picks are unrolled: each one's nodes are paid at every call, at any batch size."""
    def working_nodes(picks: int, method: str = "gaussian") -> int:
        settings = [f"model.roi_heads.nms_method={method}", f"model.roi_heads.detections_per_img={picks}"]
        proto = onnx.load(str(export_onnx(lite0[0], tmp_path / f"{method}{picks}.onnx", overrides=settings)))
        return sum(node.op_type != "Constant" for node in proto.graph.node)

    soft = working_nodes(30)
    # 35 a pick when each pick computed its IoU row, 14 when it carried a mask of the boxes left,
    # 7 when it read its score; now 4: ArgMax, Add, Gather, Mul.
    assert (soft - working_nodes(10)) / 20 <= 4
    assert soft - working_nodes(30, "hard") <= 4 * 30 + 100  # and the table, the scores, the ranking
