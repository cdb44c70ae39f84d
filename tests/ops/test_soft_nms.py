"""Soft-NMS against the paper's Algorithm 1 written out plainly, and its known answers."""
import math

import numpy as np
import pytest
import torch

from detector import ops
from detector.errors import BoxShapeError


def reference_soft_nms(boxes: np.ndarray, scores: np.ndarray, method: str, sigma: float, nt: float, min_score: float):
    """Bodla et al. 2017, Algorithm 1, one box at a time: pick the best, rescore the rest, drop the weak."""
    remaining = list(range(len(boxes)))
    current = scores.astype(np.float64).copy()
    remaining = [i for i in remaining if current[i] >= min_score]
    kept, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (current[i], -i))  # the first of equal scores
        kept.append(best)
        kept_scores.append(current[best])
        remaining.remove(best)
        for i in remaining:
            iou = plain_iou(boxes[best], boxes[i])
            if method == "gaussian":
                current[i] *= math.exp(-iou * iou / sigma)
            elif iou > nt:
                current[i] *= 1 - iou
        remaining = [i for i in remaining if current[i] >= min_score]
    return kept, kept_scores


def plain_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def random_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 100
    size = 5 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * 40
    scores = torch.rand(count, generator=generator, dtype=torch.float64)
    return torch.cat([corner, corner + size], dim=1), scores


def test_two_boxes_overlapping_by_half_get_the_papers_factors():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])  # IoU(0, 1) = 0.5
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, decayed = ops.soft_nms(boxes, scores, "gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    assert decayed.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5)])
    keep, decayed = ops.soft_nms(boxes, scores, "linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 2, 1] and decayed.tolist() == pytest.approx([0.9, 0.7, 0.4])
    keep, decayed = ops.soft_nms(boxes, scores, "linear", iou_threshold=0.6)  # below Nt: unchanged
    assert keep.tolist() == [0, 1, 2] and decayed.tolist() == pytest.approx([0.9, 0.8, 0.7])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(4))
def test_equals_the_papers_algorithm_on_random_boxes(method, seed):
    boxes, scores = random_boxes(120, seed)
    keep, decayed = ops.soft_nms(boxes, scores, method, sigma=0.5, iou_threshold=0.3, min_score=0.01)
    expected, expected_scores = reference_soft_nms(boxes.numpy(), scores.numpy(), method, 0.5, 0.3, 0.01)
    assert keep.tolist() == expected
    np.testing.assert_allclose(decayed.numpy(), expected_scores, rtol=1e-12)
    assert len(expected) < 120  # some boxes did decay below min_score


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_boxes_of_no_area_and_a_min_score_of_zero_follow_the_paper(method):
    """No NaN inside the picks: two boxes of no area do not overlap (as plain_iou says), and with
    min_score 0 every box is kept, none dropped or picked twice."""
    boxes, scores = random_boxes(40, seed=3)
    boxes[5] = boxes[9] = torch.tensor([10.0, 10.0, 10.0, 30.0], dtype=torch.float64)  # no width
    for min_score in (1e-3, 0.0):
        keep, decayed = ops.soft_nms(boxes, scores, method, 0.5, 0.3, min_score)
        expected, expected_scores = reference_soft_nms(boxes.numpy(), scores.numpy(), method, 0.5, 0.3, min_score)
        assert keep.tolist() == expected
        np.testing.assert_allclose(decayed.numpy(), expected_scores, rtol=1e-12)
    assert len(keep) == 40


def test_max_kept_is_the_head_of_the_full_answer():
    boxes, scores = random_boxes(80, 7)
    keep, decayed = ops.soft_nms(boxes, scores)
    head, head_scores = ops.soft_nms(boxes, scores, max_kept=10)
    assert torch.equal(head, keep[:10]) and torch.equal(head_scores, decayed[:10])


def test_boxes_that_do_not_overlap_keep_their_scores_and_weak_ones_are_dropped():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    keep, decayed = ops.soft_nms(boxes, torch.tensor([0.2, 0.9, 0.0005]))
    assert keep.tolist() == [1, 0] and decayed.tolist() == pytest.approx([0.9, 0.2])


def test_a_duplicate_is_kept_with_a_lower_score_where_nms_deletes_it():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]])  # IoU 0.9
    scores = torch.tensor([0.9, 0.85])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0]
    keep, decayed = ops.soft_nms(boxes, scores)
    assert keep.tolist() == [0, 1] and decayed[1] == pytest.approx(0.85 * math.exp(-0.81 / 0.5))


def test_batched_classes_never_decay_each_other():
    boxes, scores = random_boxes(90, 3)
    classes = torch.arange(90) % 3
    keep, decayed = ops.batched_soft_nms(boxes, scores, classes, method="gaussian")
    for label in range(3):
        in_class = torch.nonzero(classes == label).squeeze(1)
        alone, alone_scores = ops.soft_nms(boxes[in_class], scores[in_class])
        mine = classes[keep] == label
        assert torch.equal(keep[mine], in_class[alone]) and torch.equal(decayed[mine], alone_scores)
    assert torch.equal(decayed, decayed.sort(descending=True).values)
    top, top_scores = ops.batched_soft_nms(boxes, scores, classes, max_kept=5)
    assert torch.equal(top, keep[:5]) and torch.equal(top_scores, decayed[:5])


def test_empty_inputs_and_bad_options():
    keep, decayed = ops.batched_soft_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.numel() == 0 and decayed.numel() == 0
    with pytest.raises(ValueError, match="method"):
        ops.soft_nms(torch.zeros((1, 4)), torch.ones(1), "hard")
    with pytest.raises(ValueError, match="sigma"):
        ops.soft_nms(torch.zeros((1, 4)), torch.ones(1), sigma=0.0)
    with pytest.raises(BoxShapeError, match="soft_nms"):
        ops.soft_nms(torch.zeros((2, 5)), torch.ones(2))
