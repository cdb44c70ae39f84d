"""Balanced sampling of training examples: at most `positive_fraction` of `batch_size`
positives per image, negatives fill the rest (so an image with few objects still gives a full
batch). Labels: >= 1 positive, 0 negative, -1 ignored.

The random draws (one permutation of the positives, then one of the negatives, image by image)
follow torchvision's sampler, so with the same seed both pick the same examples.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Indices (positives, negatives) sampled from one image's labels."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    pos_perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_perm = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    # Sorted, as torchvision's mask-based selection returns them (order affects nothing but equality tests).
    return positive[pos_perm].sort().values, negative[neg_perm].sort().values
