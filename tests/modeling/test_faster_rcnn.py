"""The default model (Lite0, one stride-16 map, 9 anchors) end to end, and its input checks."""
import pytest
import torch

from detector import TargetError, build_model, load_config


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = load_config(None, ["model.num_classes=2", "model.transform.min_size=224", "model.transform.max_size=352"])
    return build_model(config)


def test_default_model_is_the_paper_layout():
    config = load_config()
    model = build_model(config)
    assert model.backbone.featmap_names == ["0"] and model.backbone.strides == (16,)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [9]
    assert model.rpn.head.cls_logits.out_channels == 9 and model.rpn.head.bbox_pred.out_channels == 36
    assert (model.rpn.fg_iou_thresh, model.rpn.bg_iou_thresh) == (0.7, 0.3)
    assert (model.rpn.batch_size_per_image, model.rpn.positive_fraction) == (256, 0.5)
    assert (model.roi_heads.batch_size_per_image, model.roi_heads.positive_fraction) == (512, 0.25)
    assert model.roi_heads.box_predictor.cls_score.out_features == config.model.num_classes + 1


def test_training_step_returns_four_finite_losses_and_gradients(small_model, real_sample):
    images, targets = real_sample
    negative = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    small_model.train()
    losses = small_model(images + [images[0]], targets + [negative])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert small_model.rpn.head.bbox_pred.weight.grad.abs().sum() > 0
    assert small_model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    small_model.zero_grad()


def test_eval_boxes_are_in_original_image_coordinates(small_model, real_photos):
    small_model.eval()
    with torch.no_grad():
        detections = small_model(real_photos)
    for image, detection in zip(real_photos, detections):
        height, width = image.shape[-2:]
        boxes = detection["boxes"]
        assert boxes.shape[1] == 4 and len(boxes) == len(detection["scores"]) == len(detection["labels"])
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all() and (boxes >= 0).all()
        assert detection["labels"].dtype == torch.int64


def test_learns_a_real_image(real_sample):
    """A few SGD steps on one photo must cut the loss: the pieces fit together and learn."""
    torch.manual_seed(0)
    # Only the backbone's top stage learns, as when fine-tuning: the backward pass through every
    # stage's depthwise convolutions cost 2.5x the CPU time and is not what this test is about.
    config = load_config(None, ["model.num_classes=1", "model.transform.min_size=192", "model.transform.max_size=256",
                                "model.backbone.trainable_layers=1"])
    model = build_model(config).train()
    images, targets = real_sample
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    history = []
    for _ in range(12):
        losses = model(images[:1], targets[:1])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.6 * sum(history[:3]) / 3, history


@pytest.mark.parametrize(
    "target, message",
    [
        ({"boxes": torch.tensor([[10.0, 10.0, 10.0, 50.0]]), "labels": torch.tensor([1])}, r"target 1: box 0 \[10.0, 10.0, 10.0, 50.0\] has zero"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 9.0, 5.0, 3.0]]), "labels": torch.tensor([1, 1])}, "target 1: box 1 .* negative"),
        ({"boxes": torch.tensor([[0.0, 0.0, float("nan"), 5.0]]), "labels": torch.tensor([1])}, "target 1: box 0 .*non-finite"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0])}, "target 1: box 0 has label 0; labels run from 1 to 2"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([3])}, "label 3"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1.0])}, "target 1: labels must be int64"),
        ({"boxes": torch.tensor([0.0, 0.0, 5.0, 5.0]), "labels": torch.tensor([1])}, r"target 1: boxes must be a float \[N, 4\]"),
        ({"boxes": torch.zeros((0, 4))}, "target 1: needs 'boxes' and 'labels'"),
    ],
)
def test_bad_targets_name_the_image_and_the_box(small_model, target, message):
    small_model.train()
    good = {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    with pytest.raises(TargetError, match=message):
        small_model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [good, target])
