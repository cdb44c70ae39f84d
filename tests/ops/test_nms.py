"""nms: the Triton kernels return exactly torchvision.ops.nms's indices, in its order."""
import pytest
import torch
import torchvision
from box_cases import DEVICE, boxes_at_iou, grid_boxes, random_boxes, random_scores

from detector import ops
from detector.ops.triton import bitmask_nms
from detector.ops.triton.bitmask_nms import threshold_as_float32


def assert_nms_matches_torchvision(boxes, scores, iou_threshold):
    expected = torchvision.ops.nms(boxes, scores, iou_threshold)
    for backend in ("triton", "torchvision", "auto"):
        actual = ops.nms(boxes, scores, iou_threshold, backend=backend)
        assert actual.dtype == torch.int64 and torch.equal(actual, expected), backend


def test_hand_computed_keep():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]], device=DEVICE)
    scores = torch.tensor([0.5, 0.9, 0.1], device=DEVICE)  # IoU(0, 1) = 90 / 110
    assert ops.nms(boxes, scores, 0.5, backend="triton").tolist() == [1, 2]
    assert ops.nms(boxes, scores, 0.9, backend="triton").tolist() == [1, 0, 2]


@pytest.mark.parametrize("count", [1, 63, 64, 65, 130, 1000])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_random_boxes(count, iou_threshold):
    boxes = random_boxes(count, seed=count, image_size=300.0 if count < 1000 else 600.0)
    assert_nms_matches_torchvision(boxes, random_scores(count, seed=count), iou_threshold)


def test_folding_in_several_steps(monkeypatch):
    # 1,000 boxes are 16 blocks: with 4 words per fold step each block folds in up to 4 steps.
    monkeypatch.setattr(bitmask_nms, "FOLD_WORDS", 4)
    boxes = random_boxes(1000, seed=5, image_size=400.0)
    assert_nms_matches_torchvision(boxes, random_scores(1000, seed=5), 0.5)


@pytest.mark.parametrize("distinct_scores", [1, 3])
def test_equal_scores_keep_input_order(distinct_scores):
    boxes = grid_boxes(200, seed=distinct_scores)
    scores = (torch.arange(200, device=DEVICE) % distinct_scores).float()
    assert_nms_matches_torchvision(boxes, scores, 0.5)


@pytest.mark.parametrize("iou_threshold", [0.25, 0.5, 0.75])
def test_iou_equal_to_threshold_is_kept(iou_threshold):
    anchor = grid_boxes(20, seed=4)
    cut = boxes_at_iou(anchor, [iou_threshold])  # each cut box has IoU exactly iou_threshold with its anchor
    boxes = torch.cat([anchor, cut])
    scores = torch.cat([torch.ones(20, device=DEVICE), torch.full((20,), 0.5, device=DEVICE)])
    assert (torch.diagonal(torchvision.ops.box_iou(anchor, cut)) == iou_threshold).all()
    assert_nms_matches_torchvision(boxes, scores, iou_threshold)
    assert_nms_matches_torchvision(boxes, scores, torch.nextafter(torch.tensor(iou_threshold), torch.tensor(0.0)).item())


def test_threshold_between_floats_is_compared_as_torchvision_on_the_same_device():
    # IoU 3/10 rounds to the float just above 0.3: CPU torchvision compares it with the double
    # 0.3 and suppresses, CUDA torchvision compares it with float(0.3) and keeps.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 10.0]], device=DEVICE)
    scores = torch.tensor([1.0, 0.5], device=DEVICE)
    assert torchvision.ops.box_iou(boxes[:1], boxes[1:]).item() == torch.tensor(0.3).item()
    assert_nms_matches_torchvision(boxes, scores, 0.3)
    assert_nms_matches_torchvision(boxes, scores, 0.30000001192092896)
    assert_nms_matches_torchvision(boxes, scores, 0.2999999)


def test_threshold_rounding_rule():
    float_above_0_3 = torch.tensor(0.3).item()  # 0.30000001192...
    assert threshold_as_float32(0.3, torch.device("cuda")) == float_above_0_3
    assert threshold_as_float32(0.3, torch.device("cpu")) == torch.nextafter(torch.tensor(0.3), torch.tensor(0.0)).item()
    assert threshold_as_float32(0.5, torch.device("cpu")) == 0.5 == threshold_as_float32(0.5, torch.device("cuda"))


def test_zero_area_and_duplicate_boxes():
    boxes = grid_boxes(150, seed=9)
    boxes[::6, 2] = boxes[::6, 0]  # zero width: IoU 0 or NaN, never suppresses nor is suppressed
    boxes[1::11, 3] = boxes[1::11, 1]
    boxes[::13] = boxes[2]  # duplicates: IoU 1
    boxes[5::17] = boxes[0]  # duplicates of a zero-area box
    assert_nms_matches_torchvision(boxes, random_scores(150, seed=9), 0.5)
    assert_nms_matches_torchvision(boxes, torch.ones(150, device=DEVICE), 0.5)


def test_empty_input():
    for backend in ("triton", "torchvision"):
        keep = ops.nms(torch.zeros((0, 4), device=DEVICE), torch.zeros(0, device=DEVICE), 0.5, backend=backend)
        assert keep.dtype == torch.int64 and keep.shape == (0,)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="scores must be"):
        ops.nms(random_boxes(3, seed=0), random_scores(4, seed=0), 0.5, backend="triton")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        ops.nms(torch.zeros((3, 5), device=DEVICE), random_scores(3, seed=0), 0.5, backend="triton")
