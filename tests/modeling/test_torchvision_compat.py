"""`from_torchvision`: our model with torchvision's weights gives torchvision's detections.

Random torchvision models stand in for the COCO checkpoints (same names and shapes); their class
logits are scaled so that real detections pass the 0.05 score threshold.
"""
import pytest
import torch
import torchvision

from detector import CheckpointError, from_torchvision


def confident_random_model(name: str, num_classes: int = 6):
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=num_classes)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(50.0)
        model.roi_heads.box_predictor.cls_score.bias.mul_(5.0)
    if name == "fasterrcnn_resnet50_fpn":
        # torchvision runs this model's COCO weights with BatchNorm eps 0 (overwrite_eps), as
        # from_torchvision does; the random stand-in must too.
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 0.0
    return model.eval()


@pytest.mark.parametrize(
    "name, num_images",
    [
        ("fasterrcnn_resnet50_fpn", 1),
        ("fasterrcnn_resnet50_fpn_v2", 1),
        ("fasterrcnn_mobilenet_v3_large_fpn", 2),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", 3),
    ],
)
def test_same_detections_as_torchvision(name, num_images, real_photos):
    reference = confident_random_model(name)
    ours = from_torchvision(name, reference.state_dict())
    assert not ours.training
    assert (ours.transform.min_size, ours.transform.max_size) == (reference.transform.min_size[-1], reference.transform.max_size)
    # The builders' 800 px short side makes a ResNet-50 forward pass take most of a minute on a
    # small CPU; the comparison is the same at a smaller size, set identically on both models.
    if reference.transform.min_size[-1] > 400:
        reference.transform.min_size, reference.transform.max_size = (400,), 667
        ours.transform.min_size, ours.transform.max_size = 400, 667
    images = real_photos[:num_images]
    with torch.no_grad():
        # torchvision pads a batch to its largest image, which changes the detections of the
        # smaller ones; ours gives every image its detections alone, so the oracle runs alone.
        expected, got = [reference([image])[0] for image in images], ours(images)
    for theirs, mine in zip(expected, got):
        assert len(theirs["boxes"]) >= 20  # real detections, not an empty comparison
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-4, rtol=0)


def test_same_training_losses_as_torchvision(real_sample):
    images, targets = real_sample
    reference = confident_random_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2)
    ours = from_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", reference.state_dict())
    reference.train(), ours.train()
    # torchvision's COCO builders freeze BatchNorm (as `from_torchvision` does); a model built
    # without weights has plain BatchNorm, so hold its statistics fixed the same way.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    # torchvision draws a random training size even with one size to choose from; skip that draw
    # so both models see the same random stream in their samplers.
    reference.transform.torch_choice = lambda sizes: sizes[-1]
    torch.manual_seed(7)
    expected = reference(images, targets)
    torch.manual_seed(7)
    got = ours(images, targets)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_coco_shaped_weights_give_90_classes_and_a_wrong_dict_is_named():
    reference = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    model = from_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", reference.state_dict())
    assert model.num_classes == 90 and model.roi_heads.box_predictor.cls_score.out_features == 91
    with pytest.raises(CheckpointError, match="does not fit"):
        from_torchvision("fasterrcnn_mobilenet_v3_large_fpn", {**reference.state_dict(), "rpn.head.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="box_predictor.cls_score.weight"):
        from_torchvision("fasterrcnn_resnet50_fpn", {"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown model 'retinanet'"):
        from_torchvision("retinanet", reference.state_dict())
