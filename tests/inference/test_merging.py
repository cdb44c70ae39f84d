"""The merge of sliced detections: hand-made cases with known answers, and the vectorized merge
against a plain one-box-at-a-time reference on random scenes."""
import random

import pytest
import torch

from detector.errors import InputError
from detector.inference.merging import CUT_TOLERANCE, merge_detections

LEFT, TOP, RIGHT, BOTTOM = range(4)


def cut(*sides_per_box) -> torch.Tensor:
    flags = torch.zeros(len(sides_per_box), 4, dtype=torch.bool)
    for row, sides in enumerate(sides_per_box):
        flags[row, list(sides)] = True
    return flags


def merge(boxes, scores, labels, sources, cut_flags=None, threshold=0.5, overlap="ios", views=None):
    return merge_detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels),
                            torch.tensor(sources), cut_flags, threshold, overlap, views)


def test_a_piece_inside_the_whole_object_merges_into_it():
    """Tile 0 sees the object whole, tile 1 its left part, cut by tile 1's right edge at x = 140."""
    boxes, scores, labels = merge([[100, 50, 160, 90], [100, 51, 140, 89]], [0.8, 0.9], [1, 1], [0, 1],
                                  cut((), (RIGHT,)))
    assert len(boxes) == 1 and scores.tolist() == pytest.approx([0.9]) and labels.tolist() == [1]
    # x from the whole box (the piece's right side was cut); y is the score-weighted mean of both.
    assert boxes[0].tolist() == pytest.approx([100, (0.8 * 50 + 0.9 * 51) / 1.7, 160, (0.8 * 90 + 0.9 * 89) / 1.7])


def test_two_pieces_of_an_object_wider_than_the_overlap_become_the_whole_object():
    """Object x 100..300; tile 0 ends at 220, tile 1 starts at 180: each sees a piece, sharing
    only the 40 px band (IoS 40/120 = 0.33, under the threshold), cut toward each other."""
    boxes, _, _ = merge([[100, 10, 220, 50], [180, 10, 300, 50]], [0.7, 0.6], [2, 2], [0, 1],
                        cut((RIGHT,), (LEFT,)))
    assert boxes.tolist() == [[100, 10, 300, 50]]
    uncut, _, _ = merge([[100, 10, 220, 50], [180, 10, 300, 50]], [0.7, 0.6], [2, 2], [0, 1])
    assert len(uncut) == 2  # not cut: two objects side by side


def test_pieces_that_only_touch_merge_when_the_tiles_do_not_overlap():
    boxes, _, _ = merge([[100, 10, 200, 50], [200 + CUT_TOLERANCE / 2, 12, 260, 48]], [0.7, 0.6], [1, 1], [0, 1],
                        cut((RIGHT,), (LEFT,)))
    assert boxes[0].tolist() == pytest.approx([100, (0.7 * 10 + 0.6 * 12) / 1.3, 260, (0.7 * 50 + 0.6 * 48) / 1.3])
    apart, _, _ = merge([[100, 10, 200, 50], [210, 12, 260, 48]], [0.7, 0.6], [1, 1], [0, 1], cut((RIGHT,), (LEFT,)))
    assert len(apart) == 2


def test_four_pieces_at_a_tile_corner_become_one_object():
    """Object 100..200 x 100..200, tiles meeting at x = 150 and y = 150 with no overlap."""
    pieces = [[100, 100, 150, 150], [150, 100, 200, 150], [100, 150, 150, 200], [150, 150, 200, 200]]
    flags = cut((RIGHT, BOTTOM), (LEFT, BOTTOM), (RIGHT, TOP), (LEFT, TOP))
    boxes, scores, _ = merge(pieces, [0.9, 0.8, 0.7, 0.6], [1] * 4, [0, 1, 2, 3], flags)
    assert len(boxes) == 1 and boxes[0].tolist() == pytest.approx([100, 100, 200, 200])
    assert scores.tolist() == pytest.approx([0.9])


def test_what_never_merges():
    box = [[10, 10, 50, 50], [30, 10, 70, 50]]  # IoS 0.5
    assert len(merge(box, [0.9, 0.8], [1, 1], [3, 3], threshold=0.4)[0]) == 2  # one tile: the model's NMS kept both
    assert len(merge(box, [0.9, 0.8], [1, 2], [0, 1], threshold=0.4)[0]) == 2  # two classes
    assert len(merge(box, [0.9, 0.8], [1, 1], [0, 1], threshold=0.5)[0]) == 2  # not above the threshold
    assert len(merge(box, [0.9, 0.8], [1, 1], [0, 1], threshold=0.4)[0]) == 1


def test_a_keeper_takes_at_most_one_box_per_tile():
    """Two objects of tile 1 both inside the full-image box: the best merges, the other stays."""
    boxes, scores, _ = merge([[0, 0, 100, 100], [10, 10, 40, 40], [60, 60, 90, 90]], [0.95, 0.9, 0.8], [1, 1, 1],
                             [-1, 1, 1])
    assert len(boxes) == 2 and scores.tolist() == pytest.approx([0.95, 0.8])


def test_empty_input():
    boxes, scores, labels = merge_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                                             torch.zeros(0, dtype=torch.long))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


# ---------------------------------------------------------------- the reference


def one_object(a, b, cut_a, cut_b, threshold, overlap="ios"):
    """The rule of merging.matches for one pair, in plain arithmetic."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    area = lambda x: max(x[2] - x[0], 1e-6) * max(x[3] - x[1], 1e-6)  # noqa: E731
    intersection = max(width, 0) * max(height, 0)
    ios = intersection / (min(area(a), area(b)) if overlap == "ios" else area(a) + area(b) - intersection)
    along_y = max(height, 0) / min(max(a[3] - a[1], 1e-6), max(b[3] - b[1], 1e-6))
    along_x = max(width, 0) / min(max(a[2] - a[0], 1e-6), max(b[2] - b[0], 1e-6))
    facing_x = ((cut_a[RIGHT] and cut_b[LEFT]) or (cut_a[LEFT] and cut_b[RIGHT])) and width >= -CUT_TOLERANCE
    facing_y = ((cut_a[BOTTOM] and cut_b[TOP]) or (cut_a[TOP] and cut_b[BOTTOM])) and height >= -CUT_TOLERANCE
    return ios > threshold or (facing_x and along_y > threshold) or (facing_y and along_x > threshold) or (
        facing_x and facing_y)


def reference_merge(boxes, scores, labels, sources, flags, threshold, overlap="ios", views=None):
    """Greedy merging one box at a time (sahi's greedy_nmm loop, with this package's rules);
    with `views`, the group's score is its sum / views, and the groups are ordered by it."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    merged, result = set(), []
    for position, i in enumerate(order):
        if i in merged:
            continue
        group, taken = [i], {sources[i]}
        for j in order[position + 1:]:
            if (j not in merged and labels[j] == labels[i] and sources[j] not in taken
                    and one_object(boxes[i], boxes[j], flags[i], flags[j], threshold, overlap)):
                group.append(j)
                taken.add(sources[j])
                merged.add(j)
        fused = []
        for side in range(4):
            seen = [(scores[k], boxes[k][side]) for k in group if not flags[k][side]]
            if seen:
                fused.append(sum(s * v for s, v in seen) / sum(s for s, _ in seen))
            else:
                fused.append((min if side < 2 else max)(boxes[k][side] for k in group))
        result.append((fused, scores[i] if views is None else sum(scores[k] for k in group) / views, labels[i]))
    return result if views is None else sorted(result, key=lambda group: -group[1])


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_merge_equals_the_reference(seed):
    rng = random.Random(seed)
    count = 300
    boxes = []
    for _ in range(count):  # clustered, so that many boxes overlap; spread over several bands of rows
        cx, cy = rng.choice([(100, 100), (300, 120), (200, 400), (520, 330), (900, 700), (1500, 1100)])
        x, y = cx + rng.uniform(-60, 60), cy + rng.uniform(-60, 60)
        big = seed % 2 and rng.random() < 0.03  # a full-image pass's large box: tall bands, long reach
        boxes.append([x, y, x + rng.uniform(5, 600 if big else 80), y + rng.uniform(5, 500 if big else 80)])
    scores = [round(rng.uniform(0.05, 1), 2) for _ in range(count)]  # ties too
    labels = [rng.randint(1, 3) for _ in range(count)]
    sources = [rng.randint(-1, 6) for _ in range(count)]
    flags = [[rng.random() < 0.25 for _ in range(4)] for _ in range(count)]
    threshold = rng.choice([0.3, 0.5, 0.7])
    expected = reference_merge(boxes, scores, labels, sources, flags, threshold)
    assert len(expected) < 0.8 * count  # many merges: the scene tests the rule, not the empty case
    got = merge(boxes, scores, labels, sources, torch.tensor(flags), threshold)
    assert len(got[0]) == len(expected)
    assert got[1].tolist() == pytest.approx([s for _, s, _ in expected])
    assert got[2].tolist() == [label for _, _, label in expected]
    assert torch.allclose(got[0], torch.tensor([box for box, _, _ in expected]), atol=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_the_merge_of_views_equals_the_reference(seed):
    """TTA's use: IoU, nothing cut, the score summed over the views; every view sees the whole
    scene, jittered, so that most boxes have a partner in most views."""
    rng = random.Random(seed)
    objects = [(rng.uniform(0, 500), rng.uniform(0, 400), rng.uniform(10, 90), rng.uniform(10, 90), rng.randint(1, 3))
               for _ in range(40)]
    boxes, scores, labels, sources = [], [], [], []
    views = 4
    for view in range(views):
        for x, y, w, h, label in objects:
            if rng.random() < 0.8:
                jitter = [rng.uniform(-0.08, 0.08) * s for s in (w, h, w, h)]
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                scores.append(rng.uniform(0.05, 1))  # no ties: the order of equal sums is float rounding
                labels.append(label)
                sources.append(view)
    threshold = rng.choice([0.45, 0.55, 0.7])
    flags = [[False] * 4 for _ in boxes]
    expected = reference_merge(boxes, scores, labels, sources, flags, threshold, "iou", views)
    assert len(expected) < 0.6 * len(boxes)  # many merges
    got = merge(boxes, scores, labels, sources, None, threshold, "iou", views)
    assert got[1].tolist() == pytest.approx([s for _, s, _ in expected])
    assert got[2].tolist() == [label for _, _, label in expected]
    assert torch.allclose(got[0], torch.tensor([box for box, _, _ in expected]), atol=1e-3)


def test_iou_keeps_a_small_object_inside_a_large_one_of_its_class_apart():
    """Two views each see both a 100 px object and a 30 px one inside it: IoS 1, IoU 0.09."""
    boxes = [[0, 0, 100, 100], [10, 10, 40, 40], [1, 0, 101, 100], [11, 10, 41, 40]]
    by_ios = merge(boxes, [0.9, 0.8, 0.85, 0.75], [1] * 4, [0, 0, 1, 1], threshold=0.55)
    assert len(by_ios[0]) == 2 and by_ios[0][1].tolist() == pytest.approx([10.5, 10, 40.5, 40], abs=0.05)
    # IoS fused the small box of view 1 into the large box of view 0: the small object lost a view.
    by_iou = merge(boxes, [0.9, 0.8, 0.85, 0.75], [1] * 4, [0, 0, 1, 1], threshold=0.55, overlap="iou", views=2)
    assert by_iou[1].tolist() == pytest.approx([(0.9 + 0.85) / 2, (0.8 + 0.75) / 2])
    assert by_iou[0][1].tolist() == pytest.approx([(0.8 * 10 + 0.75 * 11) / 1.55, 10, (0.8 * 40 + 0.75 * 41) / 1.55, 40])


def test_a_box_one_view_of_two_saw_keeps_half_its_score():
    boxes, scores, _ = merge([[0, 0, 50, 50], [200, 0, 260, 50], [2, 0, 52, 50]], [0.6, 0.9, 0.8], [1, 1, 1],
                             [0, 0, 1], overlap="iou", views=2)
    assert scores.tolist() == pytest.approx([0.7, 0.45])  # seen by both, first; then the lone one
    assert boxes.tolist()[1] == [200, 0, 260, 50]


def test_an_unknown_overlap_is_refused_by_name():
    with pytest.raises(InputError, match="'giou'"):
        merge([[0, 0, 1, 1]], [0.5], [1], [0], overlap="giou")
