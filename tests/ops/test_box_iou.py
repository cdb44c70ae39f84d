"""box_iou: every backend returns torchvision.ops.box_iou's matrix bit for bit."""
import pytest
import torch
import torchvision
from box_cases import DEVICE, assert_same_floats, grid_boxes, random_boxes

from detector import ops
from detector.ops.boxes import box_iou_reference


def test_hand_computed_values():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]], device=DEVICE)
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]], device=DEVICE)
    expected = torch.tensor([[1 / 7, 1 / 4, 0.0], [0.0, 1 / 2, 0.0]], device=DEVICE)
    for backend in ("triton", "torchvision"):
        torch.testing.assert_close(ops.box_iou(boxes1, boxes2, backend=backend), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("rows, cols", [(1, 1), (63, 64), (64, 65), (65, 130), (130, 63)])
def test_triton_equals_torchvision_on_random_boxes(rows, cols):
    boxes1, boxes2 = random_boxes(rows, seed=rows), random_boxes(cols, seed=1000 + cols)
    assert_same_floats(ops.box_iou(boxes1, boxes2, backend="triton"), torchvision.ops.box_iou(boxes1, boxes2))


def test_triton_equals_torchvision_on_degenerate_boxes():
    boxes = grid_boxes(70, seed=3)
    boxes[::7, 2] = boxes[::7, 0]  # zero width: IoU 0, or 0/0 = NaN against another zero-area box
    boxes[1::9, 3] = boxes[1::9, 1]
    boxes[::5] = boxes[0]  # duplicates: IoU exactly 1
    expected = torchvision.ops.box_iou(boxes, boxes)
    assert expected.isnan().any() and (expected == 1).any()
    assert_same_floats(ops.box_iou(boxes, boxes, backend="triton"), expected)


@pytest.mark.parametrize("rows, cols", [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs_give_empty_matrix(rows, cols):
    iou = ops.box_iou(random_boxes(rows, seed=0), random_boxes(cols, seed=1), backend="triton")
    assert iou.shape == (rows, cols) and iou.dtype == torch.float32


def test_plane_wise_reference_equals_torchvision():
    boxes1, boxes2 = grid_boxes(100, seed=5).cpu(), random_boxes(90, seed=6).cpu()
    boxes1[::4, 2] = boxes1[::4, 0]
    for a, b in [(boxes1, boxes2), (boxes1, boxes1), (boxes1.double(), boxes2.double()), (boxes1.half(), boxes2.half())]:
        assert_same_floats(box_iou_reference(a, b), torchvision.ops.box_iou(a, b))
    integers = (boxes1 * 4).int()
    assert_same_floats(box_iou_reference(integers, integers), torchvision.ops.box_iou(integers, integers))
