"""The ROI head's box loss: GIoU against torchvision.ops.generalized_box_iou_loss and hand-computed
values, on the boxes the head's deltas decode to; smooth-L1 stays the default, unchanged."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detector import ConfigError, build_model, load_config
from detector.modeling.box_loss import GIOU_LOSS_WEIGHT, generalized_iou_loss

SMALL = ["model.backbone.pretrained=false", "model.num_classes=3", "model.transform.min_size=128",
         "model.transform.max_size=160"]


def test_generalized_iou_loss_by_hand():
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 9, 8]])
    targets = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [5, 5, 9, 8]])
    # Overlap 1 of union 7 in an enclosing 3 x 3; disjoint, enclosing 3 x 1 around a union of 2; identical.
    expected = [1 - (1 / 7 - 2 / 9), 1 - (0 - 1 / 3), 0.0]
    assert generalized_iou_loss(boxes, targets).tolist() == pytest.approx(expected, abs=1e-6)


def test_generalized_iou_loss_equals_torchvisions():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(500, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 1 + torch.rand(500, 2, generator=generator) * 60], 1)
    shift = (torch.rand(500, 4, generator=generator) - 0.5) * 80  # from nested to far apart
    targets = boxes + shift
    targets[:, 2:] = torch.maximum(targets[:, 2:], targets[:, :2] + 0.5)
    ours = generalized_iou_loss(boxes, targets)
    assert torch.allclose(ours, generalized_box_iou_loss(boxes, targets), atol=1e-6)
    assert (ours > 1).any() and (ours < 0.5).any()  # disjoint and overlapping pairs both occur


def head_inputs(roi_heads, seed=0):
    """Proposals, their ground-truth boxes and labels (some background), random head outputs."""
    generator = torch.Generator().manual_seed(seed)
    count, classes = 64, roi_heads.box_predictor.cls_score.out_features
    corners = torch.rand(count, 2, generator=generator) * 100
    truth = torch.cat([corners, corners + 10 + torch.rand(count, 2, generator=generator) * 50], 1)
    proposals = truth + (torch.rand(count, 4, generator=generator) - 0.5) * 8
    labels = torch.randint(0, classes, (count,), generator=generator)
    targets = roi_heads.box_coder.encode(truth, proposals)
    logits = torch.randn(count, classes, generator=generator)
    deltas = (torch.randn(count, 4 * classes, generator=generator) * 0.5).requires_grad_()
    return logits, deltas, labels, targets, proposals, truth


def test_the_head_loss_is_giou_of_its_own_class_boxes_decoded():
    roi_heads = build_model(load_config(None, SMALL + ["model.roi_heads.box_loss=giou"])).roi_heads
    logits, deltas, labels, targets, proposals, truth = head_inputs(roi_heads)
    loss = roi_heads.compute_loss(logits, deltas, [labels], [targets], [proposals])["loss_box_reg"]
    positive = labels > 0
    decoded = roi_heads.box_coder.decode(deltas, proposals)[positive, labels[positive]]
    expected = GIOU_LOSS_WEIGHT * generalized_box_iou_loss(decoded, truth[positive], reduction="sum") / len(labels)
    assert 0 < positive.sum() < len(labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(deltas.grad).all() and deltas.grad[~positive].abs().sum() == 0


def test_giou_pulls_the_boxes_onto_their_ground_truth():
    roi_heads = build_model(load_config(None, SMALL + ["model.roi_heads.box_loss=giou"])).roi_heads
    logits, deltas, labels, targets, proposals, truth = head_inputs(roi_heads, seed=1)
    labels = labels.clamp(min=1)
    optimizer = torch.optim.SGD([deltas], lr=2.0)
    for _ in range(100):
        optimizer.zero_grad()
        roi_heads.compute_loss(logits, deltas, [labels], [targets], [proposals])["loss_box_reg"].backward()
        optimizer.step()
    decoded = roi_heads.box_coder.decode(deltas.detach(), proposals)[torch.arange(len(labels)), labels]
    assert (1 - generalized_iou_loss(decoded, truth)).min() > 0.95  # every box at IoU > 0.95


def test_smooth_l1_stays_the_default_and_unchanged():
    config = load_config(None, SMALL)
    assert config.model.roi_heads.box_loss == "smooth_l1"
    roi_heads = build_model(config).roi_heads
    logits, deltas, labels, targets, proposals, _ = head_inputs(roi_heads)
    loss = roi_heads.compute_loss(logits, deltas, [labels], [targets], [proposals])["loss_box_reg"]
    positive = labels > 0
    own = deltas.reshape(len(labels), -1, 4)[positive, labels[positive]]
    expected = F.smooth_l1_loss(own, targets[positive], beta=1 / 9, reduction="sum") / len(labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_training_step_with_giou():
    model = build_model(load_config(None, SMALL + ["model.roi_heads.box_loss=giou"])).train()
    images = [torch.rand(3, 120, 150), torch.rand(3, 100, 130)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 5, 90, 50], [5, 60, 40, 95]]), "labels": torch.tensor([2, 3])}]
    losses = model(images, targets)
    assert losses["loss_box_reg"] > 0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_an_unknown_box_loss_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["model.roi_heads.box_loss=diou"])
    assert "model.roi_heads.box_loss" in str(raised.value) and "\n" not in str(raised.value)
