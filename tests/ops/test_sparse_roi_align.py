"""RoIAlign with the sparse-matrix backward against torchvision.ops.roi_align: the same values
(bit for bit: the forward is torchvision's) and the same gradients (to float rounding)."""
import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from detector import ops
from detector.ops.sparse_roi_align import roi_align_sparse_backward


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


def values_and_gradients(function, features, rois, *args):
    features = features.detach().requires_grad_(True)
    out = function(features, rois, *args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, features, grad_out)
    return out, grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 0, -1])
def test_values_and_gradients_equal_torchvision(aligned, sampling_ratio):
    features, rois = torch.randn(2, 5, 25, 31, dtype=torch.float64), random_rois(40)
    args = ((7, 7), 1 / 16, sampling_ratio, aligned)
    expected, grad_expected = values_and_gradients(torchvision_roi_align, features, rois, *args)
    ours, grad_ours = values_and_gradients(roi_align_sparse_backward, features, rois, *args)
    assert torch.equal(ours, expected)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=0, atol=1e-12)


def test_float32_channels_last_non_square_output_and_scale():
    features = torch.randn(3, 16, 19, 23).contiguous(memory_format=torch.channels_last)
    rois = random_rois(64, image_size=(150, 180), num_images=3, seed=1, dtype=torch.float32)
    args = ((5, 3), 1 / 8, 2, False)
    expected, grad_expected = values_and_gradients(torchvision_roi_align, features, rois, *args)
    ours, grad_ours = values_and_gradients(roi_align_sparse_backward, features, rois, *args)
    assert torch.equal(ours, expected)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=1e-5, atol=1e-5)
    assert grad_ours.is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_in_double_precision():
    features = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 60.0, 50.0], [0, -5.0, 10.0, 30.0, 90.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align_sparse_backward(f, rois, 3, 1 / 8, 2, True), (features,))


def test_no_rois_gives_an_empty_output_and_a_zero_gradient():
    features = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = roi_align_sparse_backward(features, torch.zeros(0, 5), 7, 1 / 16, 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_the_dispatch_uses_the_sparse_backward_only_when_a_cpu_gradient_is_needed():
    features, rois = torch.randn(1, 3, 9, 9), random_rois(5, (100, 100), 1, dtype=torch.float32)
    assert ops.roi_align(features, rois, 2, 1 / 8, 2).grad_fn is None  # no gradient: torchvision's op as is
    with_grad = ops.roi_align(features.requires_grad_(True), rois, 2, 1 / 8, 2)
    assert type(with_grad.grad_fn).__name__ == "_RoIAlignSparseBackwardBackward"
    with torch.no_grad():
        assert ops.roi_align(features, rois, 2, 1 / 8, 2).grad_fn is None
    traced = torch.jit.trace(lambda f: ops.roi_align(f, rois, 2, 1 / 8, 2), (features,), check_trace=False)
    assert "roi_align" in str(traced.graph) and "RoIAlignSparseBackward" not in str(traced.graph)
