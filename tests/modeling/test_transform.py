import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detector.modeling.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from detector.modeling.transform import DetectionTransform


def test_normalizes_with_mean_and_std():
    transform = DetectionTransform(32, 32, IMAGENET_MEAN, IMAGENET_STD)
    image = torch.full((3, 32, 32), 0.485)
    out = transform.normalize(image)
    assert torch.allclose(out[0], torch.zeros(32, 32))  # the red mean maps to 0
    assert torch.allclose(out[1], torch.full((32, 32), (0.485 - 0.456) / 0.224))


def test_resize_short_side_with_long_side_cap_and_padding():
    transform = DetectionTransform(600, 1000, IMAGENET_MEAN, IMAGENET_STD, size_divisible=32)
    wide = torch.rand(3, 100, 400)  # short side 600 would make the long side 2400 > 1000
    tall = torch.rand(3, 300, 200)  # short side 200 -> 600: scale 3
    batch, _ = transform([wide, tall])
    assert batch.image_sizes == [(250, 1000), (900, 600)]
    assert batch.tensors.shape == (2, 3, 928, 1024)  # the largest of each side, padded to a multiple of 32
    assert batch.tensors[0, :, 250:].abs().sum() == 0  # padding is zeros


def test_equal_to_torchvision_transform_on_real_images(real_photos):
    ours = DetectionTransform(800, 1333, IMAGENET_MEAN, IMAGENET_STD)
    theirs = GeneralizedRCNNTransform(800, 1333, list(IMAGENET_MEAN), list(IMAGENET_STD)).eval()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([1])} for _ in real_photos]
    a, a_targets = ours(real_photos, targets)
    b, b_targets = theirs(real_photos, targets)
    assert a.image_sizes == b.image_sizes
    assert torch.equal(a.tensors, b.tensors)
    for x, y in zip(a_targets, b_targets):
        assert torch.equal(x["boxes"], y["boxes"])
    assert torch.equal(targets[0]["boxes"], torch.tensor([[10.0, 20.0, 100.0, 120.0]]))  # input untouched


def test_postprocess_maps_boxes_back_to_the_original_size():
    transform = DetectionTransform(600, 1000, IMAGENET_MEAN, IMAGENET_STD)
    detections = [{"boxes": torch.tensor([[60.0, 30.0, 600.0, 300.0]])}]
    out = transform.postprocess(detections, [(600, 1200)], [(300, 600)])
    assert torch.allclose(out[0]["boxes"], torch.tensor([[30.0, 15.0, 300.0, 150.0]]))


def test_integer_images_are_refused_with_the_image_index():
    transform = DetectionTransform(64, 64, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(TypeError, match="image 1: .*uint8"):
        transform([torch.rand(3, 10, 10), torch.zeros(3, 10, 10, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"image 0: expected a \[3, H, W\]"):
        transform([torch.rand(10, 10)])
