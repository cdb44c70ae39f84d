"""batched_nms: per class (and per image) NMS equal to torchvision's, in one Triton launch."""
import pytest
import torch
import torchvision
from box_cases import DEVICE, grid_boxes, random_boxes, random_scores

from detector import ops


def per_class_reference(boxes, scores, idxs, iou_threshold):
    """torchvision's per-class definition (its ``_batched_nms_vanilla``) with a stable final sort:
    one ``torchvision.ops.nms`` per class on the original coordinates, kept indices sorted by
    decreasing score, equal scores in index order."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for class_id in torch.unique(idxs):
        members = torch.nonzero(idxs == class_id).squeeze(1)
        keep[members[torchvision.ops.nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep).squeeze(1)
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def per_image_reference(boxes, scores, idxs, image_idxs, iou_threshold):
    kept = []
    for image in torch.unique(image_idxs):
        members = torch.nonzero(image_idxs == image).squeeze(1)
        kept.append(members[per_class_reference(boxes[members], scores[members], idxs[members], iou_threshold)])
    return torch.cat(kept)


@pytest.mark.parametrize("count, num_classes", [(63, 2), (130, 5), (400, 3), (1000, 20)])
def test_equals_torchvision_batched_nms(count, num_classes):
    boxes, scores = random_boxes(count, seed=count, image_size=150.0), random_scores(count, seed=count)
    idxs = torch.randint(0, num_classes, (count,), generator=torch.Generator().manual_seed(count)).to(DEVICE)
    expected = per_class_reference(boxes, scores, idxs, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5, backend="triton"), expected)
    # Scores are distinct here, so torchvision's own (unstable) final sort gives the same order.
    assert torch.equal(torchvision.ops.batched_nms(boxes, scores, idxs, 0.5), expected)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5, backend="torchvision"), expected)


def test_classes_of_63_64_65_and_130_boxes_with_equal_scores():
    sizes = [63, 64, 65, 130, 1]
    idxs = torch.cat([torch.full((size,), class_id, dtype=torch.int64) for class_id, size in enumerate(sizes)])
    idxs = idxs[torch.randperm(len(idxs), generator=torch.Generator().manual_seed(0))].to(DEVICE)
    boxes = grid_boxes(len(idxs), seed=1)
    scores = (torch.arange(len(idxs), device=DEVICE) % 4).float()  # many equal scores, within and across classes
    expected = per_class_reference(boxes, scores, idxs, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5, backend="triton"), expected)
    # Under 1,000 boxes torchvision shifts the classes apart and runs one stable NMS:
    # exact here because grid coordinates shift without rounding.
    assert torch.equal(torchvision.ops.batched_nms(boxes, scores, idxs, 0.5), expected)


def test_any_class_values_and_identical_boxes_across_classes():
    boxes = grid_boxes(50, seed=2).repeat(3, 1)  # the same boxes in three classes never suppress each other
    scores = random_scores(150, seed=2)
    idxs = torch.tensor([-5, 7, 10**12], device=DEVICE).repeat_interleave(50)
    expected = per_class_reference(boxes, scores, idxs, 0.4)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.4, backend="triton"), expected)
    assert len(expected) > 0 and len(set(expected.tolist()) & set(range(50))) > 0


@pytest.mark.parametrize("num_images", [1, 2, 4])
def test_batch_of_images_in_one_call(num_images):
    count = 600
    generator = torch.Generator().manual_seed(num_images)
    boxes, scores = grid_boxes(count, seed=num_images), random_scores(count, seed=num_images)
    idxs = torch.randint(0, 6, (count,), generator=generator).to(DEVICE)
    image_idxs = torch.randint(0, num_images, (count,), generator=generator).to(DEVICE)
    expected = per_image_reference(boxes, scores, idxs, image_idxs, 0.5)
    for backend in ("triton", "torchvision"):
        actual = ops.batched_nms(boxes, scores, idxs, 0.5, backend=backend, image_idxs=image_idxs)
        assert torch.equal(actual, expected), backend
    # Images really are separate: without image_idxs the same boxes suppress more.
    if num_images > 1:
        assert len(ops.batched_nms(boxes, scores, idxs, 0.5, backend="triton")) < len(expected)


def test_empty_and_single_box():
    empty = torch.zeros((0, 4), device=DEVICE)
    no_ids = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    for backend in ("triton", "torchvision"):
        assert ops.batched_nms(empty, torch.zeros(0, device=DEVICE), no_ids, 0.5, backend=backend).shape == (0,)
        assert ops.batched_nms(
            empty, torch.zeros(0, device=DEVICE), no_ids, 0.5, backend=backend, image_idxs=no_ids
        ).shape == (0,)
    one = ops.batched_nms(random_boxes(1, seed=0), random_scores(1, seed=0), no_ids[:0].new_zeros(1), 0.5, backend="triton")
    assert one.tolist() == [0]
