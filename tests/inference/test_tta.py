"""Test-time augmentation without a trained model: the mirror mapping is exact, the views merge
by IoU with their mean score, the resized model shares the weights and leaves the predictor's
model as it was, and bad settings are one line naming the key. The real model, ONNX and the
command line: tests/export/test_tta_inference.py."""
import pytest
import torch

from detector import ConfigError, build_model, load_config
from detector.inference.tta import TtaModel, TtaSettings, View, mirrored_boxes, resized_model, views_of


class BrightRegionModel:
    """A detector of one thing, computed rather than learned: the box around the pixels brighter
    than 0.5 (x2, y2 one past the last bright pixel), score 0.9, label 1. With `left_half_only`
    it sees an object only when its centre lies in the left half of the image, so a mirrored
    view finds what the plain view misses."""

    def __init__(self, left_half_only: bool = False):
        self.left_half_only = left_half_only

    def eval(self):
        return self

    def __call__(self, images):
        outputs = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None] if len(xs) else torch.zeros(0, 4)
            if len(box) and self.left_half_only and (box[0, 0] + box[0, 2]) / 2 >= image.shape[-1] / 2:
                box = torch.zeros(0, 4)
            outputs.append({"boxes": box, "scores": torch.full((len(box),), 0.9),
                            "labels": torch.ones(len(box), dtype=torch.long)})
        return outputs


def image_with_bright_region(x1, y1, x2, y2, height=60, width=101) -> torch.Tensor:
    image = torch.zeros(3, height, width)
    image[:, y1:y2, x1:x2] = 1.0
    return image


def mirror_tta(model, views=2) -> TtaModel:
    settings = TtaSettings(hflip=True)
    return TtaModel([(View(600, 1000, False), model), (View(600, 1000, True), model)][:views], settings, 0.05)


def test_mirroring_boxes_twice_is_the_identity_exactly():
    boxes = torch.tensor([[0.0, 3.0, 10.5, 20.0], [90.25, 0.0, 101.0, 60.0]])
    assert mirrored_boxes(boxes, 101).tolist() == [[90.5, 3.0, 101.0, 20.0], [0.0, 0.0, 10.75, 60.0]]
    assert torch.equal(mirrored_boxes(mirrored_boxes(boxes, 101), 101), boxes)


def test_the_mirrored_view_gives_the_same_box_exactly():
    """An odd width (101) and an off-centre region: mapped back as W - x (not W - 1 - x), the
    mirrored view's box is the plain view's to the bit, so the fused box is too."""
    image = image_with_bright_region(7, 11, 30, 42)
    merged = mirror_tta(BrightRegionModel())([image])[0]
    assert merged["boxes"].tolist() == [[7.0, 11.0, 30.0, 42.0]]
    assert merged["scores"].tolist() == pytest.approx([0.9])  # both views saw it: (0.9 + 0.9) / 2


def test_what_only_the_mirrored_view_sees_lands_where_it_is_with_half_the_score():
    image = image_with_bright_region(70, 5, 95, 20)  # right half: the plain view misses it
    model = BrightRegionModel(left_half_only=True)
    assert len(model([image])[0]["boxes"]) == 0
    merged = mirror_tta(model)([image])[0]
    assert merged["boxes"].tolist() == [[70.0, 5.0, 95.0, 20.0]]
    assert merged["scores"].tolist() == pytest.approx([0.45])  # one view of two


def test_a_score_the_views_average_below_the_threshold_is_dropped():
    image = image_with_bright_region(70, 5, 95, 20)
    strict = TtaModel([(View(600, 1000, False), BrightRegionModel(True)), (View(600, 1000, True), BrightRegionModel(True))],
                      TtaSettings(hflip=True), score_thresh=0.5)
    assert strict([image])[0]["boxes"].shape == (0, 4)


def test_views_of_the_settings():
    assert views_of(TtaSettings(hflip=True), (600, 1000)) == [View(600, 1000, False), View(600, 1000, True)]
    # max_size grows with min_size, so that a wide image is not capped back to the native size.
    assert views_of(TtaSettings(scales=(480, 720)), (600, 1000)) == [View(480, 800, False), View(720, 1200, False)]
    assert not TtaSettings().enabled and TtaSettings(scales=(600,)).enabled


def test_the_resized_model_shares_the_weights_and_leaves_the_model_as_it_was():
    model = build_model(load_config(None, ["model.backbone.pretrained=false", "model.num_classes=2",
                                           "model.transform.min_size=600", "model.transform.max_size=1000"])).eval()
    resized = resized_model(model, 320, 533)
    assert (resized.transform.min_size, resized.transform.max_size) == (320, 533)
    assert (model.transform.min_size, model.transform.max_size) == (600, 1000)
    assert resized.backbone is model.backbone and resized.roi_heads is model.roi_heads
    assert model.transform is not resized.transform


@pytest.mark.parametrize("changes,key", [({"scales": (0, 600)}, "inference.tta.scales"),
                                         ({"scales": (-480,)}, "inference.tta.scales"),
                                         ({"match_threshold": 0.0}, "inference.tta.match_threshold")])
def test_bad_settings_are_one_line_naming_the_key(changes, key):
    with pytest.raises(ConfigError) as raised:
        TtaSettings(hflip=True, **changes)
    assert key in str(raised.value) and "\n" not in str(raised.value)
    override = f"{key}=[{', '.join(str(s) for s in changes['scales'])}]" if "scales" in changes \
        else f"{key}={changes['match_threshold']}"
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert key in str(raised.value) and "\n" not in str(raised.value)
