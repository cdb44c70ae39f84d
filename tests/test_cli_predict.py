"""`detector predict` on what is not an image, an empty or missing source, or weights that are
missing or broken: one line on stderr naming the file and why, exit 2, no traceback, and
nothing written. (A normal run on a trained checkpoint: tests/engine/test_trainer.py.)"""
import collections

import cv2
import numpy as np
import pytest
import torch

from detector import build_model, load_config
from detector.cli import main
from detector.config import config_to_dict
from detector.engine.checkpoint import save_checkpoint

TINY = ["model.backbone.pretrained=false", "model.num_classes=2", "model.transform.min_size=64",
        "model.transform.max_size=96"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An untrained tiny checkpoint (enough for predict), broken variants of it, and sources."""
    root = tmp_path_factory.mktemp("predict")
    config = load_config(None, TINY)
    state = {"model": build_model(config).state_dict(), "config": config_to_dict(config),
             "categories": {"ids": [3, 7], "names": ["cat", "dog"]}}
    save_checkpoint(state, root / "good.pt")
    (root / "corrupt.pt").write_bytes(b"these bytes are no checkpoint" * 4)
    (root / "truncated.pt").write_bytes((root / "good.pt").read_bytes()[:50_000])
    torch.save({"weights": torch.zeros(2)}, root / "foreign.pt")
    torch.save({"model": collections.OrderedDict(), "anything": root}, root / "pickled.pt")  # a Path: not plain data
    other = load_config(None, TINY[:1] + ["model.num_classes=5"])
    save_checkpoint({**state, "config": config_to_dict(other)}, root / "mismatch.pt")
    save_checkpoint({**state, "categories": {"ids": [3]}}, root / "bad_categories.pt")

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    cv2.imwrite(str(root / "ok.png"), image)
    png, jpg = cv2.imencode(".png", image)[1].tobytes(), cv2.imencode(".jpg", image)[1].tobytes()
    (root / "cut.png").write_bytes(png[:-300])
    (root / "cut.jpg").write_bytes(jpg[:-300])
    (root / "notes.txt").write_text("not an image")
    (root / "fake.jpg").write_text("not an image either")
    (root / "empty.jpg").write_bytes(b"")
    (root / "fake.mp4").write_text("not a video")
    (root / "empty_folder").mkdir()
    (root / "text_folder").mkdir()
    (root / "text_folder" / "readme.txt").write_text("no images here")
    return root


def run_predict(files, capfd, weights, source):
    """Exit code and the stderr lines of `detector predict` (fd-level: C libraries included)."""
    out = files / "out" / f"{weights}-{source}".replace("*", "star")
    code = main(["predict", "--weights", str(files / weights), str(files / source), "--out", str(out),
                 "--device", "cpu"])
    captured = capfd.readouterr()
    return code, captured.err.strip().splitlines(), captured.out, out


SOURCES = {
    "notes.txt": "notes.txt: not an image (no image decoder recognizes its content)",
    "fake.jpg": "fake.jpg: not an image (no image decoder recognizes its content)",
    "empty.jpg": "empty.jpg: not an image (empty file)",
    "cut.png": "cut.png: truncated: the PNG stops before its IEND chunk",
    "cut.jpg": "cut.jpg: truncated: the JPEG data stops before its end-of-image marker",
    "fake.mp4": "fake.mp4: not a readable video",
    "empty_folder": "no images or videos in folder {root}/empty_folder",
    "text_folder": "no images or videos in folder {root}/text_folder",
    "missing.png": "no such file or folder: {root}/missing.png",
    "*.nothing": "no files match {root}/*.nothing",
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_source_that_is_not_an_image_or_is_missing_is_one_line_and_exit_2(files, capfd, source):
    code, err, out_text, out = run_predict(files, capfd, "good.pt", source)
    expected = SOURCES[source].format(root=files)
    if not expected.startswith(("no ", "{")):
        expected = f"{files}/{expected}"
    assert code == 2 and err == [f"detector predict: {expected}"]
    assert out_text == "" and not out.exists()


WEIGHTS = {
    "missing.pt": "checkpoint not found: {root}/missing.pt",
    "corrupt.pt": "{root}/corrupt.pt: cannot be read as a checkpoint (tensors and plain data only): ",
    "truncated.pt": "{root}/truncated.pt: cannot be read as a checkpoint (tensors and plain data only): ",
    "foreign.pt": "{root}/foreign.pt: not a detector checkpoint (no 'model' entry)",
    "pickled.pt": "{root}/pickled.pt: cannot be read as a checkpoint (tensors and plain data only): "
                  "Weights only load failed (Unsupported global: GLOBAL pathlib.PosixPath",
    "mismatch.pt": "{root}/mismatch.pt: its weights do not fit the model its config builds: size mismatch for ",
    "bad_categories.pt": "{root}/bad_categories.pt: category map: expected {{'ids': [...], 'names': [...]}}",
}


@pytest.mark.parametrize("weights", list(WEIGHTS))
def test_missing_or_broken_weights_are_one_line_and_exit_2(files, capfd, weights):
    code, err, out_text, out = run_predict(files, capfd, weights, "ok.png")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"detector predict: {WEIGHTS[weights].format(root=files)}")
    assert not out.exists()


def test_a_good_image_still_predicts(files, capfd):
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "ok.png")
    assert code == 0 and err == []
    assert (out / "predictions.json").is_file() and (out / "ok.jpg").is_file()


def test_set_changes_a_test_time_setting_and_refuses_an_architecture_key(files, capfd):
    from detector.engine.predictor import Predictor

    predictor = Predictor.from_checkpoint(files / "good.pt", "cpu", overrides=["model.roi_heads.nms_method=gaussian",
                                                                             "model.transform.min_size=80"])
    assert predictor.model.roi_heads.nms_method == "gaussian" and predictor.model.transform.min_size == 80
    out = files / "out" / "set"
    code = main(["predict", "--weights", str(files / "good.pt"), str(files / "ok.png"), "--out", str(out),
                 "--device", "cpu", "--set", "model.roi_heads.nms_method=linear"])
    assert code == 0 and (out / "predictions.json").is_file()
    code = main(["predict", "--weights", str(files / "good.pt"), str(files / "ok.png"), "--out", str(out),
                 "--device", "cpu", "--set", "model.num_classes=5"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.num_classes: fixed by the checkpoint" in err[0]


def test_overrides_may_follow_the_options_but_unknown_options_are_refused(capsys):
    from detector.cli import build_parser

    assert build_parser().parse_args(["eval", "c.yaml", "a=1", "--weights", "w.pt"]).overrides == ["a=1"]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "c.yaml", "--weights", "w.pt", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--weights", "w.pt", "img.png", "--out", "o", "a=1"])  # predict takes no overrides
