"""`detector data` on small objects: box sizes at the model's resolution (of the crops, with
data.tiles), and the tile size and overlap it recommends, on hand-made records."""
import numpy as np
import pytest

from detector import load_config
from detector.analysis.anchor_fit import ModelGeometry
from detector.analysis.data_report import data_report, tile_recommendation
from detector.analysis.summary import format_small_objects
from detector.config import TilesConfig
from detector.data.records import ImageRecord
from detector.data.tiles import crop_records

NAMES = ["thing"]


def record(index, sides, width=2000, height=1500):
    """An image with one square box of each side in `sides`, spread along a diagonal."""
    boxes = [[50 + 150 * k, 40 + 100 * k, 50 + 150 * k + side, 40 + 100 * k + side] for k, side in enumerate(sides)]
    return ImageRecord(index, f"/nowhere/{index}.jpg", width, height, np.array(boxes, np.float32).reshape(-1, 4),
                       np.ones(len(sides), np.int64), np.zeros(len(sides), bool))


@pytest.fixture(scope="module")
def geometry():
    # 2000 x 1500 resizes to 533 x 400: a 20 px box becomes 5.3 px, an 80 px one 21 px.
    config = load_config(None, ["model.backbone.pretrained=false", "model.transform.min_size=400",
                                "model.transform.max_size=600"])
    return ModelGeometry(config)


def test_tiles_are_recommended_when_a_fifth_of_the_boxes_end_up_under_16_px(geometry):
    records = [record(i, [20] * 10 + [80]) for i in range(4)]  # 40 of 44 boxes under 16 px (80 px -> 21 px)
    tiles = tile_recommendation(records, geometry)
    # Median small box 20 px: T <= 20 * 400 / 32 = 250 -> 224 (multiple of 32), resized 224 -> 400.
    assert tiles["size"] == 224 and tiles["boxes_under"] == 40
    assert tiles["median_small_box_in_tile_pixels"] == pytest.approx(20 * 400 / 224)  # 35.7 >= 32
    # The 95th percentile of the longer box side is 80 px: overlap ceil(80 / 224 to 0.05) = 0.4 (90 px).
    assert tiles["overlap"] == pytest.approx(0.4) and tiles["largest_common_box_original_pixels"] == 80
    assert tiles["override"] == ("data.tiles.size=224 data.tiles.overlap=0.4 "
                                 "inference.slice.size=224 inference.slice.overlap=0.4")
    config = load_config(None, tiles["override"].split())  # real keys, valid values
    assert config.data.tiles.size == config.inference.slice.size == 224

    assert tile_recommendation([record(0, [20, 100, 100, 100, 100])], geometry)["size"] == 224  # 1 in 5: 20%
    assert tile_recommendation([record(0, [20, 100, 100, 100, 100, 100])], geometry) is None  # 1 in 6
    assert tile_recommendation([record(0, [100] * 5)], geometry) is None


def test_with_tiles_on_the_report_sees_the_crops_and_stops_recommending(geometry):
    config = load_config(None, ["model.backbone.pretrained=false", "model.transform.min_size=400",
                                "model.transform.max_size=600", "data.tiles.size=224", "data.tiles.overlap=0.3"])
    whole = [record(i, [20] * 10 + [80]) for i in range(2)]
    crops = [crop for index, r in enumerate(whole) for crop in crop_records(r, index, config.data.tiles)
             if len(crop.boxes)]
    report, _ = data_report(config, crops, NAMES, geometry=geometry, suggest=False)
    assert "crops of data.tiles (224 px" in report["train"]["view"]
    sides = report["train"]["box_size_model_pixels"]["sqrt_area"]
    assert sides["median"] == pytest.approx(20 * 400 / 224)  # a 20 px box in a crop resized 224 -> 400
    assert report["train"]["under_16px_model_pixels"]["boxes"] == 0
    assert report["small_objects"]["recommendation"] is None

    report, _ = data_report(config, whole, NAMES, geometry=geometry, suggest=False)
    assert "view" not in report["train"] and report["train"]["under_16px_model_pixels"]["share"] == pytest.approx(40 / 44)
    lines = format_small_objects(report)
    assert lines[0].startswith("small objects: 91% of the training boxes (20) are under 16 px")
    assert "224 px tiles, overlap 0.35 bring the median small box from 20 px to 36 px" in lines[1]  # p95 77 px
    assert lines[2].strip() == report["small_objects"]["recommendation"]["override"]


def test_the_tile_is_never_below_the_smallest_tile_size(geometry):
    tiny_boxes = [record(i, [3, 3, 3], width=200, height=200) for i in range(3)]  # 200 -> 400: 3 px -> 6 px
    assert tile_recommendation(tiny_boxes, geometry)["size"] == 64  # 3 * 400 / 32 = 37 px, raised to MIN_TILE_SIZE
