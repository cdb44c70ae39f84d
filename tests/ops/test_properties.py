"""Property checks: on any small set of grid boxes (ties, duplicates, zero areas, IoUs on the
thresholds), the Triton kernels agree exactly with torchvision."""
import torch
import torchvision
from box_cases import DEVICE
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher

from detector import ops

# Corners on a half-pixel grid in a 12-pixel image: boxes collide, repeat and degenerate often.
corner = st.integers(min_value=0, max_value=24)
box = st.tuples(corner, corner, st.integers(0, 8), st.integers(0, 8)).map(
    lambda b: [b[0] / 2, b[1] / 2, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2]
)


def as_boxes(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, device=DEVICE).reshape(-1, 4)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    gt=st.lists(box, min_size=1, max_size=9),
    boxes=st.lists(box, min_size=1, max_size=70),
    thresholds=st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.75, 0.25), (0.5, 0.0)]),
    allow_low_quality=st.booleans(),
)
def test_match_equals_torchvision(gt, boxes, thresholds, allow_low_quality):
    gt, boxes = as_boxes(gt), as_boxes(boxes)
    high, low = thresholds
    expected = Matcher(high, low, allow_low_quality)(torchvision.ops.box_iou(gt, boxes))
    assert torch.equal(ops.match(gt, boxes, high, low, allow_low_quality, backend="triton"), expected)
    assert torch.equal(ops.match(gt, boxes, high, low, allow_low_quality, backend="torchvision"), expected)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    boxes=st.lists(box, min_size=1, max_size=140),
    score_levels=st.integers(1, 5),
    iou_threshold=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    num_classes=st.integers(1, 4),
)
def test_nms_and_batched_nms_equal_torchvision(boxes, score_levels, iou_threshold, num_classes):
    boxes = as_boxes(boxes)
    count = len(boxes)
    scores = (torch.arange(count, device=DEVICE) * 7 % score_levels).float()  # equal scores on purpose
    classes = torch.arange(count, device=DEVICE) * 5 % num_classes
    assert torch.equal(ops.nms(boxes, scores, iou_threshold, backend="triton"), torchvision.ops.nms(boxes, scores, iou_threshold))
    # Under 1,000 boxes torchvision offsets classes apart; on this grid that shift is exact.
    expected = torchvision.ops.batched_nms(boxes, scores, classes, iou_threshold)
    assert torch.equal(ops.batched_nms(boxes, scores, classes, iou_threshold, backend="triton"), expected)
