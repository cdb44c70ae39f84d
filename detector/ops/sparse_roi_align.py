"""RoIAlign's backward pass on the CPU as a sparse matrix product.

Every output cell of RoIAlign (RoI r, bin (i, j)) is a weighted sum of at most
4 x samples-per-bin feature cells: bilinear interpolation at a grid of sample points, averaged.
Written as a sparse matrix W [R * ph * pw, N * H * W] over the feature map laid out as rows of
channels [N * H * W, C] (a free view of a channels-last map), the forward pass is out = W @ F
and the backward pass is

    grad_features = W^T @ grad_out

one sparse-dense product that MKL spreads over every core, where torchvision's CPU kernel
scatters the gradient serially, one RoI after another. The forward values stay torchvision's own
(bit for bit, so detections and losses still equal torchvision's); W follows its sampling
exactly (bilinear rule, clamping, `aligned`, fixed and adaptive `sampling_ratio`), so the
gradients equal torchvision's to float rounding (tested).
"""
from __future__ import annotations

import warnings

import torch
import torchvision
from torch import Tensor


def transposed_sampling_matrix(rois: Tensor, feature_shape: tuple[int, int, int], output_size: tuple[int, int],
                                spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """W^T in CSR form [N * H * W, R * ph * pw], where W is the sparse matrix of RoIAlign's
    bilinear sampling weights (each divided by the number of samples of its bin)."""
    num_images, height, width = feature_shape
    ph, pw = output_size
    dtype, device = rois.dtype, rois.device
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision: malformed RoIs forced to 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.long)
    else:  # adaptive: ceil(roi size / bins) samples per bin, per RoI
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    max_h, max_w = max(int(grid_h.max()), 1) if len(rois) else 1, max(int(grid_w.max()), 1) if len(rois) else 1

    # Sample coordinates [R, ph, gh] and [R, pw, gw]; samples past a RoI's own grid are masked.
    iy = torch.arange(max_h, device=device, dtype=dtype)
    ix = torch.arange(max_w, device=device, dtype=dtype)
    py = torch.arange(ph, device=device, dtype=dtype)
    px = torch.arange(pw, device=device, dtype=dtype)
    steps_h = grid_h.clamp(min=1).to(dtype)[:, None, None]  # an empty RoI (aligned) has no sample at all
    steps_w = grid_w.clamp(min=1).to(dtype)[:, None, None]
    ys = y1[:, None, None] + py[None, :, None] * bin_h[:, None, None] + (iy[None, None, :] + 0.5) * bin_h[:, None, None] / steps_h
    xs = x1[:, None, None] + px[None, :, None] * bin_w[:, None, None] + (ix[None, None, :] + 0.5) * bin_w[:, None, None] / steps_w
    valid_y = iy[None, None, :] < grid_h[:, None, None]
    valid_x = ix[None, None, :] < grid_w[:, None, None]

    y_low, y_high, ly, keep_y = _bilinear_axis(ys, height)
    x_low, x_high, lx, keep_x = _bilinear_axis(xs, width)
    keep_y, keep_x = keep_y & valid_y, keep_x & valid_x

    # Broadcast to [R, ph, pw, gh, gw] and the four corners.
    def grid(t_y: Tensor, t_x: Tensor) -> tuple[Tensor, Tensor]:
        return t_y[:, :, None, :, None], t_x[:, None, :, None, :]

    (yl, xl), (yh, xh) = grid(y_low, x_low), grid(y_high, x_high)
    (wy1, wx1), (wy0, wx0) = grid(ly, lx), grid(1 - ly, 1 - lx)
    kept = (keep_y[:, :, None, :, None] & keep_x[:, None, :, None, :]).to(dtype) / count[:, None, None, None, None]
    base = (batch * height * width)[:, None, None, None, None]
    # Per output cell, its 4 x gh x gw (corner, sample) entries in a row: [R, ph, pw, 4, gh, gw].
    columns = torch.stack([base + yl * width + xl, base + yl * width + xh,
                           base + yh * width + xl, base + yh * width + xh], dim=3)
    weights = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], dim=3) * kept[:, :, :, None]
    return _transposed_csr(columns.reshape(-1), weights.reshape(-1), rois.shape[0] * ph * pw,
                           num_images * height * width)


def _transposed_csr(columns: Tensor, weights: Tensor, num_rows: int, num_columns: int) -> Tensor:
    """W^T in CSR form from W's entries in row order (every row, an output cell, has the same
    number of entries: a masked sample weighs 0, a corner clamped onto another adds to it), by
    one stable sort of the column indices."""
    per_row = columns.numel() // max(num_rows, 1)
    order = torch.sort(columns, stable=True).indices
    rows = torch.div(order, per_row, rounding_mode="floor")
    crow = torch.zeros(num_columns + 1, dtype=torch.long, device=columns.device)
    crow[1:] = torch.cumsum(torch.bincount(columns, minlength=num_columns), 0)
    with warnings.catch_warnings():  # "CSR support is in beta": CSR @ dense is all we use, and it is tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, rows, weights[order], (num_columns, num_rows), check_invariants=False)


def _bilinear_axis(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear rule along one axis: (low index, high index, fraction towards
    high, inside) for sample coordinates; samples outside [-1, size] contribute nothing."""
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coords = torch.where(at_edge, low.to(coords.dtype), coords)
    return low, high, coords - low.to(coords.dtype), inside


class _RoIAlignSparseBackward(torch.autograd.Function):
    """Forward: torchvision's kernel (its exact values, so detections and losses stay equal to
    torchvision's). Backward: W^T @ grad_out, parallel, instead of torchvision's serial scatter."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.options = (output_size, spatial_scale, sampling_ratio, aligned)
        ctx.feature_shape = features.shape
        ctx.channels_last = features.is_contiguous(memory_format=torch.channels_last)
        return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        num_images, channels, height, width = ctx.feature_shape
        (rois,) = ctx.saved_tensors
        transposed = transposed_sampling_matrix(rois.to(grad_out.dtype), (num_images, height, width), *ctx.options)
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(-1, channels)  # [R * ph * pw, C]
        grad = torch.sparse.mm(transposed, grad_rows)  # [N * H * W, C]
        grad = grad.view(num_images, height, width, channels).permute(0, 3, 1, 2)
        return (grad if ctx.channels_last else grad.contiguous()), None, None, None, None, None


def roi_align_sparse_backward(features: Tensor, rois: Tensor, output_size: int | tuple[int, int],
                              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align (rois [K, 5]: batch index, x1, y1, x2, y2), the same values,
    with the backward pass as one sparse-dense product."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    return _RoIAlignSparseBackward.apply(features, rois.detach(), tuple(output_size), spatial_scale, sampling_ratio,
                                         aligned)


def roi_align(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision's RoIAlign; on CPU tensors that need a gradient, with the sparse-matrix backward
    (torchvision's CPU backward is a serial scatter). Plain torchvision on other devices, without
    a gradient, and while a graph is traced or exported (it maps to ONNX RoiAlign)."""
    needs_grad = features.requires_grad and torch.is_grad_enabled()
    if features.device.type != "cpu" or not needs_grad or _capturing_a_graph():
        return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_sparse_backward(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _capturing_a_graph() -> bool:
    compiler = getattr(torch, "compiler", None)
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or bool(compiler and compiler.is_compiling())
            or bool(compiler and getattr(compiler, "is_exporting", lambda: False)()))
