import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from detector.modeling.sampler import sample_balanced


def labels_with(num_pos: int, num_neg: int, num_ignored: int) -> torch.Tensor:
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignored)])
    return labels[torch.randperm(labels.numel())]


def test_caps_positives_at_128_of_256():
    labels = labels_with(300, 1000, 50)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert pos.numel() == 128 and neg.numel() == 128
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 128  # no index drawn twice


def test_negatives_fill_when_positives_are_short():
    labels = labels_with(10, 1000, 50)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert pos.numel() == 10 and neg.numel() == 246


def test_few_negatives_and_ignored_never_sampled():
    labels = labels_with(5, 20, 500)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert pos.numel() == 5 and neg.numel() == 20
    roi_labels = torch.tensor([3, 0, 2, -1, 0, 1])  # ROI head: any class >= 1 is a positive
    pos, neg = sample_balanced(roi_labels, 512, 0.25)
    assert pos.tolist() == [0, 2, 5] and neg.tolist() == [1, 4]


def test_same_draws_as_torchvision_for_the_same_seed():
    labels = [labels_with(300, 5000, 100), labels_with(7, 3000, 10)]
    torch.manual_seed(5)
    ours = [sample_balanced(l, 256, 0.5) for l in labels]
    torch.manual_seed(5)
    pos_masks, neg_masks = BalancedPositiveNegativeSampler(256, 0.5)(labels)
    for (pos, neg), pos_mask, neg_mask in zip(ours, pos_masks, neg_masks):
        assert torch.equal(pos, torch.where(pos_mask)[0]) and torch.equal(neg, torch.where(neg_mask)[0])
