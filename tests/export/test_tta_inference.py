"""Test-time augmentation with a real model: a resized view is the model at that min_size, in the
image's pixels; PyTorch and ONNX Runtime agree under TTA, sliced or not; `--tta` works end to
end on eval, predict and analyze, and bad scales are one line naming the key."""
import json

import cv2
import numpy as np
import pytest

from detector import ConfigError
from detector.cli import main
from detector.inference import load_predictor
from detector.inference.slicing import SlicedPredictor, SliceSettings
from detector.inference.tta import TtaPredictor, TtaSettings
from detector.export.onnx import export_onnx
from export_helpers import assert_same_detections, make_checkpoint, photos
from test_export_cli import synthetic_val_config
from test_sliced_inference import terrain_photo


def by_score(detections: dict) -> dict:
    order = np.lexsort((*np.asarray(detections["boxes"]).T[::-1], -np.asarray(detections["scores"])))
    return {key: np.asarray(detections[key])[order] for key in ("boxes", "scores", "labels")}


def test_a_resized_view_is_the_model_at_that_min_size_in_the_images_pixels(lite0):
    """The checkpoint resizes to 256 / 384; one view at min_size 320 (max_size 384 * 320 / 256 =
    480) gives, to the bit, what the checkpoint gives with those two settings changed."""
    checkpoint, *_ = lite0
    image = photos()[2]  # coffee, 400 x 600: the long side is capped, so max_size matters too
    tta = load_predictor(checkpoint, "cpu", tta=TtaSettings(scales=(320,)))
    plain = load_predictor(checkpoint, "cpu", overrides=["model.transform.min_size=320", "model.transform.max_size=480"])
    native = load_predictor(checkpoint, "cpu").predict([image])[0]
    ours, theirs = by_score(tta.predict([image])[0]), by_score(plain.predict([image])[0])
    assert len(ours["boxes"]) > 10
    for key in ("boxes", "scores", "labels"):
        assert np.array_equal(ours[key], theirs[key]), key
    assert len(native["boxes"]) != len(ours["boxes"]) or not np.array_equal(by_score(native)["boxes"], ours["boxes"])


def test_onnx_under_tta_gives_the_checkpoints_detections(lite0):
    checkpoint, onnx_path, *_ = lite0
    settings = TtaSettings(hflip=True)
    eager = load_predictor(checkpoint, "cpu", score_thresh=0.1, tta=settings)
    exported = load_predictor(onnx_path, score_thresh=0.1, tta=settings)
    assert isinstance(eager, TtaPredictor) and isinstance(exported, TtaPredictor)
    plain = load_predictor(checkpoint, "cpu", score_thresh=0.1)
    for image in photos()[:3]:
        ours, theirs = eager.predict([image])[0], exported.predict([image])[0]
        assert len(ours["boxes"]) >= 3
        assert_same_detections(ours, theirs, f"TTA {image.shape}")
        assert not np.array_equal(by_score(ours)["boxes"], by_score(plain.predict([image])[0])["boxes"])


def test_tta_of_a_sliced_predictor_agrees_across_backends(lite0):
    """TTA outside, tiles inside: every view is sliced and merged by IoS, then the views by IoU."""
    checkpoint, onnx_path, *_ = lite0
    slicing, tta = SliceSettings(size=256, overlap=0.2, batch_size=8), TtaSettings(hflip=True)
    eager = load_predictor(checkpoint, "cpu", score_thresh=0.1, slicing=slicing, tta=tta)
    exported = load_predictor(onnx_path, score_thresh=0.1, slicing=slicing, tta=tta)
    assert isinstance(eager.predictor, SlicedPredictor)
    image = terrain_photo()
    ours = eager.predict([image])[0]
    assert_same_detections(ours, exported.predict([image])[0], "sliced TTA")
    sliced = load_predictor(checkpoint, "cpu", score_thresh=0.1, slicing=slicing).predict([image])[0]
    assert len(ours["boxes"]) >= 3 and not np.array_equal(by_score(ours)["boxes"], by_score(sliced)["boxes"])


def test_an_exported_file_takes_its_own_min_size_and_refuses_others_in_one_line(lite0):
    checkpoint, onnx_path, *_ = lite0
    own = load_predictor(onnx_path, tta={"hflip": True, "scales": (256,)})
    assert [view.min_size for view in own.views] == [256, 256]
    with pytest.raises(ConfigError) as raised:
        load_predictor(onnx_path, tta={"scales": (256, 320)})
    message = str(raised.value)
    assert "inference.tta.scales [256, 320]" in message and "min_size 256" in message and "\n" not in message


def test_predict_with_tta_writes_the_merged_views(lite0, tmp_path, capsys):
    checkpoint, onnx_path, *_ = lite0
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(photos()[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "strip.png"), np.full((1, 3000, 3), 128, np.uint8))  # too thin: skipped, named
    for weights in (checkpoint, onnx_path):
        out = tmp_path / f"out{weights.suffix}"
        assert main(["predict", "--weights", str(weights), str(tmp_path / "*.png"), "--out", str(out), "--tta"]) == 1
        assert "test-time augmentation: min_size the model's own, each also mirrored" in capsys.readouterr().out
        written = json.loads((out / "predictions.json").read_text())
        entry = [e for e in written["predictions"] if e["file"].endswith("astronaut.png")][0]
        expected = load_predictor(weights, "cpu", tta={"hflip": True}).predict([photos()[0]])[0]
        assert len(entry["detections"]) == len(expected["boxes"]) > 5
        assert [d["score"] for d in entry["detections"]] == pytest.approx(expected["scores"].tolist(), abs=1e-4)
        assert "strip.png" in (out / "skipped.txt").read_text()


def test_eval_and_analyze_with_tta(lite0, tmp_path, capsys):
    checkpoint, onnx_path, *_ = lite0
    config = synthetic_val_config(tmp_path, batch_size=2)
    assert main(["eval", str(config), "--weights", str(checkpoint), "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main(["eval", str(config), "--weights", str(checkpoint), "--out", str(tmp_path / "tta"), "--tta", "224,256"]) == 0
    assert "test-time augmentation: min_size 224, 256, each also mirrored" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert metrics["AP"] is not None
    predictions = [json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("tta", "plain")]
    assert predictions[0] != predictions[1]
    # The config's inference.tta, as for slicing; analyze predicts the same way.
    assert main(["analyze", str(config), "--weights", str(onnx_path), "--out", str(tmp_path / "a"),
                 "inference.tta.hflip=true", "--score-thresh", "0.05"]) == 0
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["AP50"] is not None


@pytest.mark.parametrize("option", [["--tta", "0,256"], ["inference.tta.scales=[0]", "--tta"]])
def test_tta_scales_not_above_zero_are_one_line_naming_the_key(lite0, tmp_path, capsys, option):
    checkpoint, *_ = lite0
    config = synthetic_val_config(tmp_path, batch_size=1)
    cv2.imwrite(str(tmp_path / "x.png"), photos()[1][..., ::-1])
    commands = [["eval", str(config), "--weights", str(checkpoint), "--out", str(tmp_path / "e")]]
    if option[0] == "--tta":  # predict's key=value overrides are the model's test-time settings
        commands.append(["predict", "--weights", str(checkpoint), str(tmp_path / "x.png"), "--out", str(tmp_path / "p")])
    for args in commands:
        assert main(args + option) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "inference.tta.scales" in err[0], err


def test_onnx_scales_on_the_command_line_are_refused_in_one_line(lite0, tmp_path, capsys):
    _, onnx_path, *_ = lite0
    cv2.imwrite(str(tmp_path / "x.png"), photos()[1][..., ::-1])
    assert main(["predict", "--weights", str(onnx_path), str(tmp_path / "x.png"), "--out", str(tmp_path / "p"),
                 "--tta", "320"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inference.tta.scales [320]" in err[0] and ".pt" in err[0], err


def test_a_checkpoint_trained_with_tta_predicts_with_it_unless_told_off(tmp_path, capsys):
    """inference.tta travels with the weights, as inference.slice does; `--tta off` turns it off,
    and an export whose saved scales its graph cannot run says so and how to go on."""
    checkpoint, _ = make_checkpoint(tmp_path / "tta.pt", ["inference.tta.hflip=true", "inference.tta.scales=[320]"])
    saved = load_predictor(checkpoint, "cpu")
    assert isinstance(saved, TtaPredictor) and [v.min_size for v in saved.views] == [320, 320]
    cv2.imwrite(str(tmp_path / "x.png"), photos()[1][..., ::-1])
    outputs = {}
    for name, option in (("saved", []), ("off", ["--tta", "off"])):
        assert main(["predict", "--weights", str(checkpoint), str(tmp_path / "x.png"), "--out", str(tmp_path / name)]
                    + option) == 0
        outputs[name] = json.loads((tmp_path / name / "predictions.json").read_text())["predictions"][0]["detections"]
        assert ("test-time augmentation: min_size 320, each also mirrored" in capsys.readouterr().out) == (name == "saved")
    plain = load_predictor(checkpoint, "cpu", tta={"hflip": False, "scales": ()}).predict([photos()[1]])[0]
    assert len(outputs["off"]) == len(plain["boxes"]) != len(outputs["saved"])
    onnx_path = export_onnx(checkpoint, tmp_path / "tta.onnx")
    with pytest.raises(ConfigError, match=r"inference.tta.scales \[320\].*--tta off"):
        load_predictor(onnx_path)
    assert main(["predict", "--weights", str(onnx_path), str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                 "--tta"]) == 0
    assert "min_size the model's own, each also mirrored" in capsys.readouterr().out
