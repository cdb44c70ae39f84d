"""Box sets and comparisons shared by the ops tests (torchvision is the oracle throughout)."""
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_boxes(count: int, seed: int, image_size: float = 200.0, max_side: float = 60.0) -> torch.Tensor:
    """xyxy float32 boxes with random corners inside an image; sides in [1, max_side]."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator) * image_size
    sides = 1 + torch.rand(count, 2, generator=generator) * (max_side - 1)
    return torch.cat([top_left, top_left + sides], dim=1).to(DEVICE)


def grid_boxes(count: int, seed: int, image_size: int = 64, max_side: int = 24) -> torch.Tensor:
    """Boxes on a 1/4-pixel grid: many exact ties, duplicates and IoUs that hit 0.25, 0.5, 0.75."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.randint(0, image_size * 4, (count, 2), generator=generator) / 4
    sides = torch.randint(1, max_side * 4, (count, 2), generator=generator) / 4
    return torch.cat([top_left, top_left + sides], dim=1).to(DEVICE)


def random_scores(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def assert_same_floats(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal shapes, NaN in the same places, and every other value equal (bit for bit up to the sign of 0)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.nan_to_num(nan=-7.0), expected.nan_to_num(nan=-7.0))


def boxes_at_iou(boxes: torch.Tensor, fractions=(0.25, 0.5, 0.75)) -> torch.Tensor:
    """For each box and fraction f, the box cut to its left f of the width: IoU exactly f
    (grid coordinates keep every product exact)."""
    cuts = []
    for fraction in fractions:
        cut = boxes.clone()
        cut[:, 2] = boxes[:, 0] + (boxes[:, 2] - boxes[:, 0]) * fraction
        cuts.append(cut)
    return torch.cat(cuts)
