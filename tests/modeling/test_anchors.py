import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TorchvisionImageList

from detector.modeling.anchors import AnchorGenerator, cell_anchors


def test_paper_default_is_nine_anchors_with_hand_computed_corners():
    anchors = cell_anchors([128, 256, 512], [0.5, 1.0, 2.0])
    assert anchors.shape == (9, 4)
    # ratio 0.5 (height / width), size 128: w = 128 * sqrt(2) = 181.02, h = 128 / sqrt(2) = 90.51
    assert anchors[0].tolist() == [-91.0, -45.0, 91.0, 45.0]
    # ratio 1, size 256: a 256 x 256 square around the location
    assert anchors[4].tolist() == [-128.0, -128.0, 128.0, 128.0]
    # ratio 2, size 512: w = 362.04, h = 724.08
    assert anchors[8].tolist() == [-181.0, -362.0, 181.0, 362.0]
    areas = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    # same size => same area across ratios, up to the rounding of corners
    assert torch.allclose(areas[[0, 3, 6]], torch.full((3,), 128.0**2), rtol=0.02)


def test_grid_shifts_by_stride_and_counts_every_location():
    generator = AnchorGenerator([[128, 256, 512]], [[0.5, 1.0, 2.0]])
    feature = torch.zeros(1, 8, 5, 7)  # a stride-16 map of an 80 x 112 padded batch
    anchors = generator((80, 112), [feature])
    assert anchors.shape == (5 * 7 * 9, 4)
    # location (row 1, col 2) is shifted by (32, 16) from location (0, 0)
    first, shifted = anchors[:9], anchors[(1 * 7 + 2) * 9 : (1 * 7 + 2) * 9 + 9]
    assert torch.equal(shifted - first, torch.tensor([32.0, 16.0, 32.0, 16.0]).expand(9, 4))


def test_equal_to_torchvision_on_a_pyramid():
    sizes = [[32], [64], [128], [256], [512]]
    ratios = [[0.5, 1.0, 2.0]] * 5
    features = [torch.zeros(2, 4, 800 // s, 1216 // s) for s in (4, 8, 16, 32, 64)]
    ours = AnchorGenerator(sizes, ratios)((800, 1216), features)
    reference = TorchvisionAnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios))
    theirs = reference(TorchvisionImageList(torch.zeros(2, 3, 800, 1216), [(800, 1200), (790, 1216)]), features)
    assert torch.equal(ours, theirs[0]) and torch.equal(ours, theirs[1])


def test_mismatched_number_of_maps_is_a_clear_error():
    generator = AnchorGenerator([[128, 256, 512]], [[0.5, 1.0, 2.0]])
    try:
        generator((64, 64), [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)])
    except ValueError as error:
        assert "1 anchor sets" in str(error) and "2 feature maps" in str(error)
    else:
        raise AssertionError("expected a ValueError")
