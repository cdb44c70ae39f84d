import math

import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detector.modeling.box_coder import BoxCoder


def test_encode_hand_computed():
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])  # centre (10, 15), size 10 x 20
    deltas = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, reference)
    assert torch.allclose(deltas, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, reference)
    assert torch.allclose(weighted, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))


def test_decode_inverts_encode():
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 100
    reference = torch.cat([xy, xy + torch.rand(50, 2) * 50 + 1], dim=1)
    xy = torch.rand(50, 2) * 100
    gt = torch.cat([xy, xy + torch.rand(50, 2) * 50 + 1], dim=1)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    decoded = coder.decode(coder.encode(gt, reference), reference)
    assert decoded.shape == (50, 1, 4)
    assert torch.allclose(decoded[:, 0], gt, atol=1e-4)


def test_decode_clamps_width_growth_at_log_1000_over_16():
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), reference)
    width = boxes[0, 0, 2] - boxes[0, 0, 0]
    assert torch.isfinite(boxes).all()
    assert torch.allclose(width, torch.tensor(10 * 1000 / 16))


def test_equal_to_torchvision_with_several_classes():
    torch.manual_seed(1)
    xy = torch.rand(30, 2) * 100
    reference = torch.cat([xy, xy + torch.rand(30, 2) * 50 + 1], dim=1)
    deltas = torch.randn(30, 4 * 5)
    ours = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, reference)
    theirs = TorchvisionBoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, [reference])
    assert torch.equal(ours, theirs)
    gt = reference.flip(0) + 3
    assert torch.equal(
        BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, reference),
        TorchvisionBoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt, reference),
    )
