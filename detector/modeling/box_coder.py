"""Box coding: boxes <-> regression deltas (dx, dy, dw, dh) relative to reference boxes.

dx = wx * (gt_cx - ref_cx) / ref_w, dw = ww * log(gt_w / ref_w), and the inverse. The weights
scale deltas to unit-ish variance: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the ROI head.
Decoding clamps dw, dh at log(1000 / 16) so one wild prediction cannot overflow exp().
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas [N, 4] that turn each reference box into its ground-truth box."""
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)
        ref_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        ref_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        ref_ctr_x = reference_boxes[:, 0:1] + 0.5 * ref_widths
        ref_ctr_y = reference_boxes[:, 1:2] + 0.5 * ref_heights

        gt_widths = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
        gt_heights = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
        gt_ctr_x = gt_boxes[:, 0:1] + 0.5 * gt_widths
        gt_ctr_y = gt_boxes[:, 1:2] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ref_ctr_x) / ref_widths
        dy = wy * (gt_ctr_y - ref_ctr_y) / ref_heights
        dw = ww * torch.log(gt_widths / ref_widths)
        dh = wh * torch.log(gt_heights / ref_heights)
        return torch.cat((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Boxes from deltas [N, 4 * C] (C boxes per reference box, e.g. one per class) -> [N, C, 4]."""
        reference_boxes = reference_boxes.to(deltas.dtype)
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        boxes = torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)
        return boxes
