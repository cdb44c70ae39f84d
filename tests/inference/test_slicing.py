"""Sliced prediction: tiles that cover the image, detections back in image pixels, and objects cut
by a seam found exactly once. The seam tests use two real aerial photos (tests/inference/terrain,
MIT) and a detector that sees exactly the ground truth a tile shows (`VisibleTruth`): what they
check is the geometry of slicing and merging, which a trained model's errors would blur."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.choices import MIN_TILE_SIZE
from detector.errors import ConfigError
from detector.inference.slicing import SlicedModel, SliceSettings, tile_starts, tile_windows

TERRAIN = Path(__file__).parent / "terrain"


def terrain() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(image [3, H, W] in 0..1, boxes xyxy, labels) of each terrain photo."""
    data = json.loads((TERRAIN / "annotations.json").read_text())
    result = []
    for image in data["images"]:
        pixels = cv2.cvtColor(cv2.imread(str(TERRAIN / image["file_name"])), cv2.COLOR_BGR2RGB)
        assert pixels.shape[:2] == (image["height"], image["width"])
        boxes = [[x, y, x + w, y + h] for a in data["annotations"] if a["image_id"] == image["id"]
                 for x, y, w, h in [a["bbox"]]]
        labels = [a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        image = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255).contiguous()
        result.append((image, torch.tensor(boxes), torch.tensor(labels)))
    return result


class VisibleTruth:
    """A detector that finds every ground-truth box a tile shows at least `min_visible` of, as the
    visible part clipped to the tile, scored by that fraction (a whole object outranks a piece).
    It knows the truth by the tile's pixels: each tile is located in the image it came from."""

    def __init__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, min_visible: float = 0.05):
        self.image, self.boxes, self.labels, self.min_visible = image, boxes, labels, min_visible
        self.batches = []

    def eval(self):
        return self

    def locate(self, tile: torch.Tensor) -> tuple[int, int]:
        assert tile.untyped_storage().data_ptr() == self.image.untyped_storage().data_ptr()  # a view of the image
        offset = tile.storage_offset()
        height_stride = self.image.stride(1)
        return offset % height_stride, offset // height_stride  # x, y

    def __call__(self, tiles: list[torch.Tensor]) -> list[dict]:
        self.batches.append(len(tiles))
        outputs = []
        for tile in tiles:
            x, y = self.locate(tile)
            height, width = tile.shape[-2:]
            window = torch.tensor([x, y, x + width, y + height], dtype=torch.float32)
            clipped = torch.cat([torch.maximum(self.boxes[:, :2], window[:2]), torch.minimum(self.boxes[:, 2:], window[2:])], 1)
            area = lambda b: (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # noqa: E731
            visible = area(clipped) / area(self.boxes)
            keep = visible >= self.min_visible
            outputs.append({"boxes": clipped[keep] - window[:2].repeat(2), "scores": visible[keep],
                            "labels": self.labels[keep]})
        return outputs


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def objects_cut_by_seams(boxes: torch.Tensor, height: int, width: int, size: int, overlap: float) -> tuple[int, int]:
    """(boxes some tile cuts, boxes no tile holds whole)."""
    windows = torch.tensor(tile_windows(height, width, size, overlap), dtype=torch.float32)
    inside = ((boxes[:, None, :2] >= windows[None, :, :2]) & (boxes[:, None, 2:] <= windows[None, :, 2:])).all(-1)
    meets = ((boxes[:, None, :2] < windows[None, :, 2:]) & (boxes[:, None, 2:] > windows[None, :, :2])).all(-1)
    return int((meets & ~inside).any(1).sum()), int((~inside.any(1)).sum())


# ---------------------------------------------------------------- tiles


@pytest.mark.parametrize("length,size,overlap", [(2048, 256, 0.2), (1365, 256, 0.2), (1000, 512, 0.0), (513, 512, 0.5),
                                                 (700, 700, 0.2), (300, 512, 0.2), (4000, 640, 0.25)])
def test_tiles_cover_the_side_with_no_thin_leftover(length, size, overlap):
    starts = tile_starts(length, size, overlap)
    tile = min(size, length)
    assert starts[0] == 0 and starts[-1] + tile == length  # the last tile ends at the border
    assert all(b > a for a, b in zip(starts, starts[1:]))
    step = max(1, round(size * (1 - overlap)))
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))  # no gap: neighbours overlap by >= overlap
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered.all()


def test_windows_are_one_size_and_a_large_slice_is_one_tile():
    windows = tile_windows(1365, 2048, 256, 0.2)
    assert len(windows) == len(tile_starts(1365, 256, 0.2)) * len(tile_starts(2048, 256, 0.2)) == 7 * 10
    assert {(x2 - x1, y2 - y1) for x1, y1, x2, y2 in windows} == {(256, 256)}
    assert tile_windows(300, 500, 512, 0.2) == [(0, 0, 500, 300)]
    assert tile_windows(300, 900, 512, 0.2) == [(0, 0, 512, 300), (388, 0, 900, 300)]  # 900 - 512: shifted inward


@pytest.mark.parametrize("changes,option", [({"overlap": 0.9}, "--overlap"), ({"overlap": -0.1}, "--overlap"),
                                            ({"size": MIN_TILE_SIZE - 1}, "--slice"), ({"size": 1}, "--slice")])
def test_bad_settings_name_the_option(changes, option):
    with pytest.raises(ConfigError, match=option):
        SliceSettings(**{"size": 256, **changes})


# ---------------------------------------------------------------- seams


@pytest.mark.parametrize("size,overlap", [(256, 0.2), (256, 0.0), (384, 0.1), (200, 0.3)])
def test_every_object_cut_by_a_seam_is_found_exactly_once(size, overlap):
    cut_objects = never_whole = 0
    for image, boxes, labels in terrain():
        detector = VisibleTruth(image, boxes, labels)
        found = SlicedModel(detector, SliceSettings(size=size, overlap=overlap, batch_size=8))([image])[0]
        cut, whole_nowhere = objects_cut_by_seams(boxes, image.shape[1], image.shape[2], size, overlap)
        cut_objects, never_whole = cut_objects + cut, never_whole + whole_nowhere
        assert len(found["boxes"]) == len(boxes), (size, overlap, found["boxes"], boxes)
        overlaps = iou(boxes, found["boxes"])
        best = overlaps.max(1)
        assert (best.values >= 0.9).all(), best.values
        assert torch.equal(found["labels"][best.indices], labels)
        assert len(set(best.indices.tolist())) == len(boxes)  # each object once
        assert max(detector.batches) <= 8 and len(detector.batches) == -(-len(tile_windows(
            image.shape[1], image.shape[2], size, overlap)) // 8)  # one call per batch of 8 tiles
    assert cut_objects >= 5  # the seams do cross objects (else this test proves nothing)
    assert never_whole >= (3 if overlap == 0 else 0), never_whole  # and with no overlap, some only in pieces


def test_full_image_pass_adds_what_no_tile_holds():
    """An object larger than a tile is seen whole only by the full-image pass, and comes out once."""
    image = torch.rand(3, 600, 800)
    boxes = torch.tensor([[100.0, 100.0, 500.0, 450.0], [600.0, 500.0, 630.0, 530.0]])
    labels = torch.tensor([1, 1])

    class Both(VisibleTruth):  # the full image is not a tile: it sees everything at full score
        def __call__(self, tiles):
            return [{"boxes": self.boxes, "scores": torch.ones(2), "labels": self.labels} if t.shape == self.image.shape
                    else super(Both, self).__call__([t])[0] for t in tiles]

    found = SlicedModel(Both(image, boxes, labels), SliceSettings(size=128, overlap=0.25, full_image=True))([image])[0]
    assert len(found["boxes"]) == 2
    assert torch.allclose(found["boxes"][iou(boxes, found["boxes"]).argmax(1)], boxes, atol=0.5)


def test_boxes_return_to_image_pixels():
    """Every tile's boxes are shifted by its own corner: a detector that sees one object in each
    tile at a fixed tile position gives one box per tile at tile corner + that position."""
    image = torch.zeros(3, 300, 500)

    def one_box_per_tile(tiles):
        return [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in tiles]

    one_box_per_tile.eval = lambda: one_box_per_tile
    found = SlicedModel(one_box_per_tile, SliceSettings(size=128, overlap=0.2))([image])[0]
    expected = torch.tensor([[x + 10, y + 20, x + 30, y + 40] for x, y, _, _ in tile_windows(300, 500, 128, 0.2)],
                            dtype=torch.float32)
    assert torch.equal(found["boxes"][torch.argsort(found["boxes"][:, 1] * 1000 + found["boxes"][:, 0])], expected)
