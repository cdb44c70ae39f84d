"""`detector predict` on sources that cannot be predicted (not an image, truncated, empty, missing,
an empty glob or folder, a broken video): each is named on stderr with its reason, listed in
predictions.json and skipped.txt, and every good source is still predicted; exit 0 / 1 / 2.
Weights that are missing or broken: one line, exit 2, nothing written. A run stopped half-way
leaves what it predicted. (A normal run on a trained checkpoint: tests/engine/test_trainer.py.)"""
import collections
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
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
    # Real photos, one of them truncated half-way as scraped data often is.
    (root / "photos").mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        cv2.imwrite(str(root / "photos" / f"{name}.jpg"), getattr(skimage.data, name)()[:, :, ::-1])
    coffee = (root / "photos" / "coffee.jpg").read_bytes()
    (root / "photos" / "coffee.jpg").write_bytes(coffee[:len(coffee) // 2])
    return root


def run_predict(files, capfd, weights, *sources, extra=()):
    """Exit code, stderr lines, stdout and output folder of `detector predict` (fd-level: C
    libraries included)."""
    out = files / "out" / "-".join([weights, *sources, *extra]).replace("*", "star").replace("/", "_")
    code = main(["predict", "--weights", str(files / weights), *(str(files / s) for s in sources), "--out", str(out),
                 "--device", "cpu", *extra])
    captured = capfd.readouterr()
    return code, captured.err.strip().splitlines(), captured.out, out


def written(out):
    """predictions.json (parsed) and skipped.txt (lines) of a run."""
    return json.loads((out / "predictions.json").read_text()), (out / "skipped.txt").read_text().splitlines()


SOURCES = {
    "notes.txt": "cannot read the image (not an image: no image decoder recognizes its content)",
    "fake.jpg": "cannot read the image (not an image: no image decoder recognizes its content)",
    "empty.jpg": "cannot read the image (empty file)",
    "cut.png": "cannot read the image (truncated: the PNG stops before its IEND chunk)",
    "cut.jpg": "cannot read the image (truncated: the JPEG data stops before its end-of-image marker)",
    "fake.mp4": "not a readable video",
    "empty_folder": "no images or videos in the folder",
    "text_folder": "no images or videos in the folder",
    "missing.png": "no such file or folder",
    "*.nothing": "no files match the pattern",
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_source_that_cannot_be_predicted_is_named_and_skipped(files, capfd, source):
    code, err, out_text, out = run_predict(files, capfd, "good.pt", source)
    assert code == 2  # nothing could be predicted
    assert err == [f"detector predict: skipped {files / source}: {SOURCES[source]}"]
    predictions, skipped = written(out)
    assert predictions == {"predictions": [], "skipped": [{"source": str(files / source), "reason": SOURCES[source]}]}
    assert skipped == [f"{files / source}: {SOURCES[source]}"]
    assert f"predicted 0 of 1 sources; 1 skipped, listed in {out / 'skipped.txt'}" in out_text


def test_good_sources_are_predicted_and_each_bad_one_named(files, capfd):
    sources = ("ok.png", "missing.png", "*.nothing", "notes.txt", "photos/chelsea.jpg")
    code, err, out_text, out = run_predict(files, capfd, "good.pt", *sources)
    assert code == 1
    assert err == [f"detector predict: skipped {files / s}: {SOURCES[s]}" for s in ("missing.png", "*.nothing", "notes.txt")]
    predictions, skipped = written(out)
    assert [p["file"] for p in predictions["predictions"]] == [str(files / "ok.png"), str(files / "photos" / "chelsea.jpg")]
    assert [s["source"] for s in predictions["skipped"]] == [str(files / s) for s in ("missing.png", "*.nothing", "notes.txt")]
    assert len(skipped) == 3 and (out / "ok.jpg").is_file() and (out / "chelsea.jpg").is_file()
    assert "predicted 2 of 5 sources; 3 skipped" in out_text


def test_a_truncated_jpeg_among_real_photos_loses_no_good_photo(files, capfd):
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "photos")
    cut = files / "photos" / "coffee.jpg"
    reason = "cannot read the image (truncated: the JPEG data stops before its end-of-image marker)"
    assert code == 1 and err == [f"detector predict: skipped {cut}: {reason}"]
    predictions, skipped = written(out)
    good = [files / "photos" / f"{name}.jpg" for name in ("astronaut", "chelsea", "rocket")]
    assert [p["file"] for p in predictions["predictions"]] == [str(p) for p in good]
    assert predictions["skipped"] == [{"source": str(cut), "reason": reason}] and skipped == [f"{cut}: {reason}"]
    for path in good:
        assert cv2.imread(str(out / path.name)).shape == cv2.imread(str(path)).shape  # annotated, same size
    assert not (out / "coffee.jpg").exists()


def test_strict_stops_at_the_first_bad_source_keeping_what_came_before(files, capfd):
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "ok.png", "cut.jpg", "photos/chelsea.jpg",
                                           extra=("--strict",))
    assert code == 2 and err == [f"detector predict: {files / 'cut.jpg'}: {SOURCES['cut.jpg']}"]
    predictions, skipped = written(out)
    assert [p["file"] for p in predictions["predictions"]] == [str(files / "ok.png")]
    assert skipped == [f"{files / 'cut.jpg'}: {SOURCES['cut.jpg']}"] and not (out / "chelsea.jpg").exists()


def test_a_video_is_predicted_beside_images_and_a_broken_one_skipped(files, capfd):
    video = files / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    frame = cv2.resize(cv2.imread(str(files / "photos" / "chelsea.jpg")), (96, 64))
    for shift in range(3):
        writer.write(np.roll(frame, shift * 8, axis=1))
    writer.release()
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "clip.mp4", "fake.mp4", "ok.png")
    assert code == 1 and err == [f"detector predict: skipped {files / 'fake.mp4'}: not a readable video"]
    predictions, _ = written(out)
    assert [len(p.get("frames", [])) for p in predictions["predictions"]] == [3, 0]
    assert cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 3


def test_sources_with_the_same_name_do_not_overwrite_each_other(files, capfd):
    (files / "again").mkdir(exist_ok=True)
    (files / "again" / "ok.png").write_bytes((files / "ok.png").read_bytes())
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "ok.png", "again", "ok.png")
    assert code == 0
    predictions, _ = written(out)
    assert [(p["file"], Path(p["output"]).name) for p in predictions["predictions"]] == [
        (str(files / "ok.png"), "ok.jpg"), (str(files / "again" / "ok.png"), "ok_2.jpg")]  # listed twice: once


def test_ctrl_c_leaves_the_images_done_so_far_and_whole_json_at_every_moment(files, capfd, monkeypatch):
    from detector.inference import runner as prediction

    real, calls = prediction.predict_image, []

    def interrupted_at_the_third(predictor, path, folder):
        # Before each image, what is on disk is whole JSON listing images already done, each annotated.
        on_disk = json.loads((folder.folder / "predictions.json").read_text())["predictions"]
        assert [p["file"] for p in on_disk] == [str(c) for c in calls[:len(on_disk)]]
        assert all(Path(p["output"]).is_file() for p in on_disk)
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(predictor, path, folder)

    monkeypatch.setattr(prediction, "predict_image", interrupted_at_the_third)
    code, err, out_text, out = run_predict(files, capfd, "good.pt", "photos", "ok.png")
    assert code == 130 and err[-1] == f"detector predict: interrupted; what was predicted so far is in {out}"
    predictions, _ = written(out)
    assert [p["file"] for p in predictions["predictions"]] == [str(p) for p in calls[:2]]
    assert all(Path(p["output"]).is_file() for p in predictions["predictions"])


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


SET_SOURCES = ("ok.png", "photos/chelsea.jpg", "photos/astronaut.jpg")


@pytest.fixture(scope="module")
def scored(files):
    """A checkpoint like good.pt whose scores are known: the untrained head gives every box
    almost the same logits, so a bias of +0.3 on class 1 ("cat") puts every cat at a score of
    about e^0.3 / (2 + e^0.3) = 0.405 and every dog at about 1 / (2 + e^0.3) = 0.297, far on
    either side of 0.35. Anchors of 16..64 px fit the 64..96 px images: many boxes survive NMS."""
    config = load_config(None, TINY + ["model.anchors.sizes=[[16,32,64]]"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.3, 0.0]))  # background, cat, dog
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(config),
                     "categories": {"ids": [3, 7], "names": ["cat", "dog"]}}, files / "scored.pt")
    return "scored.pt"


def detections_by_file(files, capfd, weights, *extra):
    """{source file: its detections in predictions.json, in the written order} of a `detector
    predict` run on SET_SOURCES."""
    code, err, _, out = run_predict(files, capfd, weights, *SET_SOURCES, extra=extra)
    assert code == 0 and err == []
    predictions, _ = written(out)
    assert [p["file"] for p in predictions["predictions"]] == [str(files / s) for s in SET_SOURCES]
    return {p["file"]: p["detections"] for p in predictions["predictions"]}


def test_set_and_a_bare_override_reach_the_model(files, capfd, scored):
    """`--set KEY=VALUE` and a bare `key=value` change what predict writes, as the setting says:
    a score threshold keeps exactly the default run's detections that score above it; one
    detection per image keeps exactly each image's first (best) one."""
    default = detections_by_file(files, capfd, scored)  # score_thresh 0.05, detections_per_img 100
    for found in default.values():
        assert len(found) > 10 and [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
        assert {d["name"] for d in found if d["score"] > 0.35} == {"cat"} and any(d["score"] < 0.35 for d in found)

    thresholded = detections_by_file(files, capfd, scored, "--set", "model.roi_heads.score_thresh=0.35")
    assert thresholded == {file: [d for d in found if d["score"] > 0.35] for file, found in default.items()}
    assert all(0 < len(thresholded[file]) < len(found) for file, found in default.items())

    one_each = detections_by_file(files, capfd, scored, "model.roi_heads.detections_per_img=1")  # bare: a --set too
    assert one_each == {file: found[:1] for file, found in default.items()}


def test_set_changes_a_test_time_setting_and_refuses_an_architecture_key(files, capfd):
    from detector.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(files / "good.pt", "cpu", overrides=["model.roi_heads.nms_method=gaussian",
                                                                             "model.transform.min_size=80"])
    assert predictor.model.roi_heads.nms_method == "gaussian" and predictor.model.transform.min_size == 80
    out = files / "out" / "set"
    code = main(["predict", "--weights", str(files / "good.pt"), str(files / "ok.png"), "--out", str(out),
                 "--device", "cpu", "--set", "model.num_classes=5"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.num_classes: fixed by the checkpoint" in err[0]
    assert not out.exists()


def test_prediction_keeps_freed_memory_unless_told_not_to(files, monkeypatch):
    from detector.inference.predictor import Predictor

    calls = []
    monkeypatch.setattr("detector.engine.allocator.keep_freed_memory", lambda: calls.append(1) or True)
    Predictor.from_checkpoint(files / "good.pt", "cpu")
    Predictor.from_checkpoint(files / "good.pt", "cpu", overrides=["train.keep_freed_memory=false"])
    assert calls == [1]  # the allocator itself: tests/engine/test_allocator.py
