"""Our sparse-matrix RoIAlign against torchvision.ops.roi_align: values and gradients."""
import pytest
import torch
from torchvision.ops import roi_align

from detector.ops.roi_align import roi_align_sparse


def random_rois(count: int, image_size=(400, 500), num_images=2, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    corners = torch.rand(count, 4, generator=generator, dtype=dtype) * torch.tensor([width, height, width, height], dtype=dtype)
    boxes = torch.cat([corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:])], 1)
    boxes[0] = torch.tensor([-30.0, -20.0, 10.0, 10.0])  # partly outside, top left
    boxes[1] = torch.tensor([width - 20.0, height - 20.0, width + 30.0, height + 40.0])  # past the far edge
    boxes[2] = torch.tensor([100.0, 100.0, 100.0, 100.0])  # empty
    boxes[3] = torch.tensor([10.0, 10.0, width - 10.0, height - 10.0])  # large: many adaptive samples
    index = torch.randint(0, num_images, (count, 1), generator=generator).to(dtype)
    return torch.cat([index, boxes], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 0, -1])
def test_values_and_gradients_equal_torchvision(aligned, sampling_ratio):
    features = torch.randn(2, 5, 25, 31, dtype=torch.float64, requires_grad=True)
    rois = random_rois(40)
    expected = roi_align(features, rois, (7, 7), 1 / 16, sampling_ratio, aligned)
    ours = roi_align_sparse(features, rois, 7, 1 / 16, sampling_ratio, aligned)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    grad_out = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, features, grad_out)
    (grad_ours,) = torch.autograd.grad(ours, features, grad_out)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=0, atol=1e-12)


def test_float32_channels_last_non_square_output_and_scale():
    features = torch.randn(3, 16, 19, 23).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    rois = random_rois(64, image_size=(150, 180), num_images=3, seed=1, dtype=torch.float32)
    expected = roi_align(features, rois, (5, 3), 1 / 8, 2, False)
    ours = roi_align_sparse(features, rois, (5, 3), 1 / 8, 2, False)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, features, grad_out)
    (grad_ours,) = torch.autograd.grad(ours, features, grad_out)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=1e-5, atol=1e-5)
    assert grad_ours.is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_in_double_precision():
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 60.0, 50.0], [0, -5.0, 10.0, 30.0, 90.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align_sparse(f, rois, 3, 1 / 8, 2, True), (features,))


def test_no_rois_gives_an_empty_output_that_still_backpropagates():
    features = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = roi_align_sparse(features, torch.zeros(0, 5), 7, 1 / 16, 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
