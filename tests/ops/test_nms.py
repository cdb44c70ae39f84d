"""nms: every backend returns the indices of an independent greedy NMS written out below, in its
order, which is exactly torchvision.ops.nms's (equal scores keep input order, a box goes only at
IoU strictly above the threshold, zero-area boxes suppress nothing).

The oracle is not torchvision itself: on the CPU the "torchvision" and "auto" backends *are*
torchvision.ops.nms, so comparing them with it could never fail. The reference is checked on
hand-worked cases first, then every backend (the Triton kernels through Triton's interpreter on
the CPU, see conftest.py, and "auto" also as it runs on a GPU: through the first-call check to
the kernel) is compared with it on hand-worked and random cases."""
import warnings

import numpy as np
import pytest
import torch
import torchvision
from box_cases import DEVICE, boxes_at_iou, grid_boxes, random_boxes, random_scores

from detector import ops
from detector.ops import backend as ops_backend
from detector.ops import triton_check
from detector.ops.triton import bitmask_nms
from detector.ops.triton.bitmask_nms import threshold_as_float32
from detector.ops.triton_check import TritonFallbackWarning


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Greedy NMS, written out plainly: visit the boxes by decreasing score (Python's sort is
    stable, so equal scores keep input order); keep a box unless an already kept box overlaps it
    with IoU > iou_threshold. IoU in float32 with torchvision's operation order (inter / (area_a
    + area_b - inter)), so 0 / 0 (two zero-area boxes) is NaN and suppresses nothing; it is
    compared with the threshold as torchvision does on the device: as a double on the CPU, as
    float32 on CUDA. Vectorised over the other boxes only, the greedy loop is the plain one."""
    b = boxes.detach().cpu().to(torch.float32).numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    values = scores.detach().cpu().tolist()
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)  # stable, as torchvision's
    threshold = np.float64(iou_threshold) if boxes.device.type == "cpu" else np.float32(iou_threshold)
    suppressed = np.zeros(len(values), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[i] + area - inter)  # float32 throughout
        suppressed |= iou.astype(threshold.dtype) > threshold  # NaN > t is False
    return keep


# "auto" sends CPU tensors to torchvision; "auto->triton" is "auto" as it runs on a GPU (kernel
# checked on its first call, then trusted), let onto CPU tensors here as test_triton_check.py does.
BACKENDS = ("triton", "torchvision", "auto") + (() if DEVICE.type == "cuda" else ("auto->triton",))
_AUTO_VERDICTS: dict[str, bool] = {}  # the first-call check runs once for this module


def run_backend(name, boxes, scores, iou_threshold):
    """The backend's kept indices as a list, or why the run does not count."""
    if name != "auto->triton":
        keep = ops.nms(boxes, scores, iou_threshold, backend=name)
        return keep.tolist() if keep.dtype == torch.int64 else f"dtype {keep.dtype}"
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(ops_backend, "AUTO_TRITON_DEVICES", {"cuda", "cpu"})
        patch.setattr(triton_check, "_verdicts", _AUTO_VERDICTS)
        keep = ops.nms(boxes, scores, iou_threshold, backend="auto")
    if _AUTO_VERDICTS != {"nms": True}:  # fell back to torchvision's op: the kernel did not run
        fallback = [str(w.message) for w in caught if issubclass(w.category, TritonFallbackWarning)]
        return f"kernel not trusted by the first-call check: {fallback}"
    return keep.tolist()


def assert_every_backend_gives(boxes, scores, iou_threshold, expected):
    """Every backend returns `expected` (int64 indices); all wrong backends are named."""
    results = {name: run_backend(name, boxes, scores, iou_threshold) for name in BACKENDS}
    wrong = {name: result for name, result in results.items() if result != list(expected)}
    assert not wrong, f"expected {list(expected)}, got {wrong}"


def assert_nms_matches_reference(boxes, scores, iou_threshold):
    assert_every_backend_gives(boxes, scores, iou_threshold, reference_nms(boxes, scores, iou_threshold))


def tensors(boxes, scores):
    return (torch.tensor(boxes, dtype=torch.float32, device=DEVICE),
            torch.tensor(scores, dtype=torch.float32, device=DEVICE))


# Worked by hand: (boxes, scores, threshold, kept indices in order).
HAND_CASES = {
    # IoU(0, 1) = 90 / 110 = 0.818: box 1 (higher score) suppresses box 0 at 0.5, not at 0.9.
    "overlap_suppressed": ([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], [0.5, 0.9, 0.1], 0.5, [1, 2]),
    "overlap_below_threshold": ([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], [0.5, 0.9, 0.1], 0.9, [1, 0, 2]),
    # A chain: IoU(0, 1) = IoU(1, 2) = 50 / 150 = 1/3, IoU(0, 2) = 0. Box 1 goes, so box 2, which
    # only box 1 overlapped, stays (greedy: a suppressed box suppresses nothing).
    "chain": ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.3, [0, 2]),
    "chain_above_threshold": ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.34, [0, 1, 2]),
    # Kept in decreasing score, not input order.
    "score_order": ([[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]], [0.1, 0.3, 0.2], 0.5, [1, 2, 0]),
    # Equal scores keep input order; a duplicate of an earlier box with the same score goes.
    "ties": ([[20, 20, 30, 30], [0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], [1.0, 1.0, 1.0, 1.0], 0.5,
             [0, 1, 3]),
    # IoU exactly 50 / 100 = 0.5: kept at threshold 0.5 (not strictly above), suppressed at 0.49.
    "iou_equal_to_threshold": ([[0, 0, 10, 10], [0, 0, 5, 10]], [0.9, 0.8], 0.5, [0, 1]),
    "iou_just_above_threshold": ([[0, 0, 10, 10], [0, 0, 5, 10]], [0.9, 0.8], 0.49, [0]),
    # A zero-area box (inside box 0, with the highest score) suppresses nothing, nor does its
    # duplicate (0 / 0); a duplicate of box 0 with a lower score goes (IoU 1).
    "zero_area": ([[0, 0, 10, 10], [2, 2, 2, 8], [2, 2, 2, 8], [0, 0, 10, 10]], [0.5, 0.9, 0.8, 0.4], 0.5,
                  [1, 2, 0]),
}


@pytest.mark.parametrize("case", list(HAND_CASES))
def test_reference_on_hand_worked_cases(case):
    boxes, scores, threshold, expected = HAND_CASES[case]
    assert reference_nms(*tensors(boxes, scores), threshold) == expected


@pytest.mark.parametrize("case", list(HAND_CASES))
def test_hand_worked_cases(case):
    boxes, scores, threshold, expected = HAND_CASES[case]
    assert_every_backend_gives(*tensors(boxes, scores), threshold, expected)


@pytest.mark.parametrize("count", [1, 63, 64, 65, 130, 1000])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_random_boxes(count, iou_threshold):
    boxes = random_boxes(count, seed=count, image_size=300.0 if count < 1000 else 600.0)
    assert_nms_matches_reference(boxes, random_scores(count, seed=count), iou_threshold)


def test_folding_in_several_steps(monkeypatch):
    # 1,000 boxes are 16 blocks: with 4 words per fold step each block folds in up to 4 steps.
    monkeypatch.setattr(bitmask_nms, "FOLD_WORDS", 4)
    boxes = random_boxes(1000, seed=5, image_size=400.0)
    assert_nms_matches_reference(boxes, random_scores(1000, seed=5), 0.5)


@pytest.mark.parametrize("distinct_scores", [1, 3])
def test_equal_scores_keep_input_order(distinct_scores):
    boxes = grid_boxes(200, seed=distinct_scores)
    scores = (torch.arange(200, device=DEVICE) % distinct_scores).float()
    assert_nms_matches_reference(boxes, scores, 0.5)


@pytest.mark.parametrize("iou_threshold", [0.25, 0.5, 0.75])
def test_iou_equal_to_threshold_is_kept(iou_threshold):
    anchor = grid_boxes(20, seed=4)
    cut = boxes_at_iou(anchor, [iou_threshold])  # each cut box has IoU exactly iou_threshold with its anchor
    boxes = torch.cat([anchor, cut])
    scores = torch.cat([torch.ones(20, device=DEVICE), torch.full((20,), 0.5, device=DEVICE)])
    assert (torch.diagonal(torchvision.ops.box_iou(anchor, cut)) == iou_threshold).all()
    assert_nms_matches_reference(boxes, scores, iou_threshold)
    assert_nms_matches_reference(boxes, scores, torch.nextafter(torch.tensor(iou_threshold), torch.tensor(0.0)).item())


def test_threshold_between_floats_is_compared_as_torchvision_on_the_same_device():
    # IoU 3/10 rounds to the float just above 0.3: CPU torchvision compares it with the double
    # 0.3 and suppresses, CUDA torchvision compares it with float(0.3) and keeps.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 10.0]], device=DEVICE)
    scores = torch.tensor([1.0, 0.5], device=DEVICE)
    assert torchvision.ops.box_iou(boxes[:1], boxes[1:]).item() == torch.tensor(0.3).item()
    assert_every_backend_gives(boxes, scores, 0.3, [0] if DEVICE.type == "cpu" else [0, 1])
    assert_every_backend_gives(boxes, scores, 0.30000001192092896, [0, 1])
    assert_every_backend_gives(boxes, scores, 0.2999999, [0])
    for threshold in (0.3, 0.30000001192092896, 0.2999999):
        assert_nms_matches_reference(boxes, scores, threshold)


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
    assert_nms_matches_reference(boxes, random_scores(150, seed=9), 0.5)
    assert_nms_matches_reference(boxes, torch.ones(150, device=DEVICE), 0.5)


def test_empty_input():
    for backend in ("triton", "torchvision"):
        keep = ops.nms(torch.zeros((0, 4), device=DEVICE), torch.zeros(0, device=DEVICE), 0.5, backend=backend)
        assert keep.dtype == torch.int64 and keep.shape == (0,)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="scores must be"):
        ops.nms(random_boxes(3, seed=0), random_scores(4, seed=0), 0.5, backend="triton")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        ops.nms(torch.zeros((3, 5), device=DEVICE), random_scores(3, seed=0), 0.5, backend="triton")
