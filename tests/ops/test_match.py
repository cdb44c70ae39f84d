"""match: every backend equals torchvision's Matcher(high, low, allow_low_quality)(box_iou(gt, boxes))."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from box_cases import DEVICE, boxes_at_iou, grid_boxes, random_boxes
from torchvision.models.detection._utils import Matcher

from detector import ops
from detector.ops.matcher import boxes_per_chunk, match_chunked

REPO_ROOT = Path(__file__).resolve().parents[2]  # subprocesses import detector from the checkout

BACKENDS = ("triton", "torchvision")


def torchvision_match(gt_boxes, boxes, high=0.7, low=0.3, allow_low_quality=True):
    return Matcher(high, low, allow_low_quality)(torchvision.ops.box_iou(gt_boxes, boxes))


def assert_matches_torchvision(gt_boxes, boxes, high=0.7, low=0.3):
    for allow_low_quality in (True, False):
        expected = torchvision_match(gt_boxes, boxes, high, low, allow_low_quality)
        for backend in BACKENDS:
            actual = ops.match(gt_boxes, boxes, high, low, allow_low_quality, backend=backend)
            assert actual.dtype == torch.int64
            assert torch.equal(actual, expected), (backend, allow_low_quality)


def test_hand_computed_labels():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=DEVICE)
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 2.0], [20.0, 20.0, 30.0, 30.0]], device=DEVICE
    )  # IoU 1, 0.5, 0.2, 0
    for backend in BACKENDS:
        assert ops.match(gt, boxes, 0.7, 0.3, False, backend=backend).tolist() == [0, -2, -1, -1]


@pytest.mark.parametrize("num_gt, num_boxes", [(1, 63), (3, 64), (7, 65), (33, 130), (64, 257), (65, 100)])
def test_random_boxes(num_gt, num_boxes):
    assert_matches_torchvision(random_boxes(num_gt, seed=num_gt), random_boxes(num_boxes, seed=num_boxes, max_side=90))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_boxes_with_exact_ties_and_thresholds(seed):
    # On a 1/4-pixel grid many IoUs are equal (ties for a box's best GT and for a GT's best
    # boxes) and many land exactly on 0.25, 0.5 or 0.75.
    gt = grid_boxes(40, seed=seed)
    boxes = torch.cat([grid_boxes(200, seed=100 + seed), boxes_at_iou(gt[::3])])
    iou = torchvision.ops.box_iou(gt, boxes)
    assert (iou == 0.25).any() and (iou == 0.5).any() and (iou == 0.75).any()
    for high, low in [(0.75, 0.25), (0.5, 0.5), (0.7, 0.3)]:
        assert_matches_torchvision(gt, boxes, high, low)


def test_iou_exactly_on_thresholds():
    gt = torch.tensor([[0.0, 0.0, 4.0, 1.0]], device=DEVICE)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 8.0, 1.0]], device=DEVICE)
    assert torchvision.ops.box_iou(gt, boxes).tolist() == [[0.25, 0.5, 0.75, 0.5]]
    for backend in BACKENDS:
        assert ops.match(gt, boxes, 0.75, 0.25, False, backend=backend).tolist() == [-2, -2, 0, -2]
        assert ops.match(gt, boxes, 0.5, 0.25, False, backend=backend).tolist() == [-2, 0, 0, 0]
    assert_matches_torchvision(gt, boxes, 0.75, 0.5)


def test_a_near_tie_is_not_a_tie():
    # The second box's IoU is 1e-7 below the GT's best: it is not among the GT's best boxes.
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=DEVICE)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 5.0 - 2**-20]], device=DEVICE)
    iou = torchvision.ops.box_iou(gt, boxes)[0]
    assert 0 < (iou[0] - iou[1]).item() < 1e-6
    for backend in BACKENDS:
        assert ops.match(gt, boxes, backend=backend).tolist() == [0, -2]


def test_duplicate_anchors_and_duplicate_gt():
    gt = random_boxes(5, seed=7)
    gt = torch.cat([gt, gt[1:3]])  # duplicate GT: a box's best GT is the first of equals
    boxes = torch.cat([random_boxes(60, seed=8), gt[[0, 0, 0, 2, 2]], random_boxes(10, seed=9)])
    assert_matches_torchvision(gt, boxes)


def test_gt_overlapping_nothing_makes_every_zero_iou_box_its_best():
    # torchvision's quirk: this GT's best IoU is 0, so every box with IoU 0 to it is among
    # its "best boxes" and keeps its own best GT instead of -1.
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [500.0, 500.0, 510.0, 510.0]], device=DEVICE)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 4.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]], device=DEVICE)
    expected = torchvision_match(gt, boxes)
    assert expected.tolist() == [0, 0, 0]
    for backend in BACKENDS:
        assert torch.equal(ops.match(gt, boxes, backend=backend), expected)


def test_zero_area_boxes_and_gt():
    gt = grid_boxes(12, seed=11)
    gt[3, 2] = gt[3, 0]  # zero-area GT: IoU 0 with real boxes, NaN (0 / 0) with zero-area ones
    boxes = grid_boxes(140, seed=12)
    boxes[::10, 3] = boxes[::10, 1]
    boxes[5] = gt[3]
    assert torchvision.ops.box_iou(gt, boxes).isnan().any()
    assert_matches_torchvision(gt, boxes)
    assert_matches_torchvision(gt, boxes[:3])  # no NaN column


def test_one_gt_and_one_box():
    assert_matches_torchvision(random_boxes(1, seed=1), random_boxes(1, seed=2))
    assert_matches_torchvision(random_boxes(1, seed=3), random_boxes(200, seed=4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gt_means_background_and_no_boxes_means_empty(backend):
    no_gt = torch.zeros((0, 4), device=DEVICE)
    matches = ops.match(no_gt, random_boxes(70, seed=1), backend=backend)
    assert matches.dtype == torch.int64 and matches.tolist() == [ops.BELOW_LOW_THRESHOLD] * 70
    assert ops.match(random_boxes(3, seed=2), torch.zeros((0, 4), device=DEVICE), backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_above_high_is_rejected_as_torchvision_does(backend):
    with pytest.raises(ValueError, match="low threshold"):
        ops.match(random_boxes(2, seed=0), random_boxes(3, seed=1), high=0.3, low=0.7, backend=backend)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 129, 130, 131, 1000])
def test_chunked_matcher_across_chunk_boundaries(chunk_size):
    # A GT's best boxes split across chunks (duplicates at 0 and 129, ties on the grid), and
    # a GT overlapping nothing (best IoU 0 in every chunk).
    gt = torch.cat([grid_boxes(20, seed=21), torch.tensor([[900.0, 900.0, 901.0, 901.0]], device=DEVICE)]).cpu()
    boxes = grid_boxes(130, seed=22).cpu()
    boxes[129] = boxes[0] = gt[4]
    for allow_low_quality in (True, False):
        expected = torchvision_match(gt, boxes, 0.7, 0.3, allow_low_quality)
        assert torch.equal(match_chunked(gt, boxes, 0.7, 0.3, allow_low_quality, chunk_size=chunk_size), expected)


def test_chunk_size_bounds_the_pairs_per_chunk():
    assert boxes_per_chunk(1000) == 1048  # 2**20 pairs / 1000 GT
    assert boxes_per_chunk(1000) * 1000 <= 2**20
    assert boxes_per_chunk(3_000_000) == 1  # never zero
    assert boxes_per_chunk(0) == 2**20


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the peak RSS from Linux /proc")
def test_chunked_matcher_peak_memory_stays_small():
    # 60k boxes x 400 GT: torchvision's Matcher(box_iou) would hold 24M pairs x ~9 floats
    # (~0.9 GB). The chunked matcher must stay under 100 MB above its starting RSS, also on a
    # second call (small results kept between chunks once fragmented the heap by a chunk per chunk).
    code = """
from pathlib import Path
import torch
from detector.ops.matcher import match_chunked
def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
generator = torch.Generator().manual_seed(0)
def boxes(count):
    top_left = torch.rand(count, 2, generator=generator) * 1000
    return torch.cat([top_left, top_left + 1 + torch.rand(count, 2, generator=generator) * 100], dim=1)
anchors, gt = boxes(60_000), boxes(400)
match_chunked(gt[:5], anchors[:1000])
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
before = kib("VmRSS")
for _ in range(2):
    match_chunked(gt, anchors)
print((kib("VmHWM") - before) / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    extra_mb = float(result.stdout.strip().splitlines()[-1])
    assert extra_mb < 100, f"chunked matcher used {extra_mb:.0f} MB above its starting RSS"
