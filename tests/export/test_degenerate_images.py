"""Degenerate images are refused one by one, by name, and the run goes on.

A folder holds a readable 1 x 2000 px strip (it would resize to 0 px high), a 20 x 600 px wide
photo (12 px high after the resize: thin, but the model can see it) and normal real photos.
`detector predict` with the checkpoint (.pt, PyTorch) and with its `detector export` (.onnx,
ONNX Runtime) predicts every image but the strip, names the strip on stderr and in skipped.txt,
exits 1 (some skipped), and both give the same detections for the rest: same labels, box IoU
>= 0.999, scores within 1e-4 (a detection within 1e-4 of the score threshold may appear on one
side only). Before inference had its own room, the strip crashed the whole run in
F.interpolate (a RuntimeError and a traceback), whichever weights were given.

`detector eval` and `detector analyze` over a val set with such a strip skip and name it too
(exit 1), and `detector serve` answers 422 naming the upload and goes on serving.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detector.cli import main
from detector.data.dataset import read_image
from detector.errors import DegenerateImageError
from detector.inference import load_predictor
from export_helpers import box_iou, photos, resized

SCORE_TOLERANCE = 1e-4
IOU_FLOOR = 0.999


@pytest.fixture(scope="module")
def folder(lite0, tmp_path_factory):
    """(checkpoint, its export by `detector export`, the image folder, the strip's path)."""
    checkpoint, *_ = lite0
    root = tmp_path_factory.mktemp("degenerate")
    onnx_path = root / "model.onnx"
    assert main(["export", "--weights", str(checkpoint), "--out", str(onnx_path)]) == 0
    images = root / "images"
    images.mkdir()
    astronaut, chelsea, coffee, rocket = photos()[:4]
    strip = images / "b_strip_1x2000.png"
    written = {
        "a_astronaut.png": astronaut, "c_chelsea.png": chelsea, "d_coffee.png": coffee,
        strip.name: resized(rocket, (1, 2000)),
        "e_wide_20x600.png": resized(rocket, (20, 600)),
    }
    for name, image in written.items():
        assert cv2.imwrite(str(images / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert read_image(strip).shape == (1, 2000, 3)  # readable: refused for its size, not as a broken file
    return checkpoint, onnx_path, images, strip


def unpartnered(ours: dict, theirs: dict, score_thresh: float) -> list[str]:
    """Detections of `ours` without a partner in `theirs` (same label, IoU >= 0.999, |score
    difference| <= 1e-4), leaving out those within 1e-4 of the score threshold."""
    boxes, scores, labels = (np.asarray(ours[k], dtype=np.float64) for k in ("boxes", "scores", "labels"))
    other_boxes, other_scores, other_labels = (np.asarray(theirs[k], dtype=np.float64)
                                               for k in ("boxes", "scores", "labels"))
    boxes, other_boxes = boxes.reshape(-1, 4), other_boxes.reshape(-1, 4)
    iou = box_iou(boxes, other_boxes) if len(boxes) and len(other_boxes) else np.zeros((len(boxes), len(other_boxes)))
    missing = []
    for i, score in enumerate(scores):
        if abs(score - score_thresh) <= SCORE_TOLERANCE:
            continue
        partner = (other_labels == labels[i]) & (iou[i] >= IOU_FLOOR) & (np.abs(other_scores - score) <= SCORE_TOLERANCE)
        if not partner.any():
            missing.append(f"box {boxes[i].round(2).tolist()} label {int(labels[i])} score {score:.5f}")
    return missing


def test_predict_skips_the_strip_by_name_and_both_backends_agree_on_the_rest(folder, tmp_path, capfd):
    checkpoint, onnx_path, images, strip = folder
    good = sorted(p for p in images.iterdir() if p != strip)
    written = {}
    for weights in (checkpoint, onnx_path):
        out = tmp_path / weights.suffix[1:]
        code = main(["predict", "--weights", str(weights), str(images), "--out", str(out), "--device", "cpu"])
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 1, (weights.suffix, err)  # done, some skipped
        assert len(err) == 1 and err[0].startswith(f"detector predict: skipped {strip}: 1x2000 px"), err
        assert "would resize to 0x" in err[0]
        skipped = (out / "skipped.txt").read_text().splitlines()
        assert len(skipped) == 1 and skipped[0].startswith(f"{strip}: 1x2000 px"), skipped
        result = json.loads((out / "predictions.json").read_text())
        assert [s["source"] for s in result["skipped"]] == [str(strip)]
        assert [p["file"] for p in result["predictions"]] == [str(p) for p in good]
        written[weights.suffix] = result["predictions"]

    eager, exported = load_predictor(checkpoint, "cpu"), load_predictor(onnx_path)
    score_thresh = eager.model.roi_heads.score_thresh
    for index, path in enumerate(good):
        image = read_image(path)
        ours, theirs = eager.predict([image])[0], exported.predict([image])[0]
        # What the command wrote is what the predictor gives.
        assert len(written[".pt"][index]["detections"]) == len(ours["scores"]), path.name
        assert len(written[".onnx"][index]["detections"]) == len(theirs["scores"]), path.name
        there, back = unpartnered(ours, theirs, score_thresh), unpartnered(theirs, ours, score_thresh)
        assert not there, f"{path.name}: PyTorch detections without an ONNX partner: {there[:3]} ({len(there)} in all)"
        assert not back, f"{path.name}: ONNX detections without a PyTorch partner: {back[:3]} ({len(back)} in all)"
    wide = read_image(images / "e_wide_20x600.png")
    assert len(eager.predict([wide])[0]["scores"]) > 0, "the thin-but-visible image should be compared on detections"


def test_a_predictor_refuses_the_strip_naming_it_on_every_backend(folder):
    checkpoint, onnx_path, images, strip = folder

    for weights in (checkpoint, onnx_path):
        predictor = load_predictor(weights, "cpu")
        with pytest.raises(DegenerateImageError, match=rf"^{strip}: 1x2000 px"):
            predictor.check_size(1, 2000, str(strip))
        with pytest.raises(DegenerateImageError, match=r"^image 1: 1x2000 px"):  # never an interpolation crash
            predictor.predict([read_image(images / "c_chelsea.png"), read_image(strip)])


def write_val_set(root) -> tuple[str, str]:
    """A COCO val set of three real photos and a 1 x 2000 strip, a box each; (config, strip path)."""
    images = root / "val"
    images.mkdir(parents=True)
    astronaut, chelsea, coffee, rocket = photos()[:4]
    entries = {"astronaut.png": astronaut, "strip.png": resized(rocket, (1, 2000)), "chelsea.png": chelsea,
               "coffee.png": coffee}
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip([1, 2, 3, 4], ["circle", "square", "triangle", "cross"])]}
    for number, (name, image) in enumerate(entries.items(), start=1):
        assert cv2.imwrite(str(images / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        height, width = image.shape[:2]
        coco["images"].append({"id": number, "file_name": name, "height": height, "width": width})
        box = [10, 0, 100, height] if height < 10 else [20, 20, 120, 100]
        coco["annotations"].append({"id": number, "image_id": number, "category_id": 1 + number % 4, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
    (root / "val.json").write_text(json.dumps(coco))
    config = root / "eval.yaml"
    config.write_text(f"model: {{num_classes: 4}}\ndata:\n  val: {{format: coco, images: {images}, "
                      f"annotations: {root / 'val.json'}}}\ntrain: {{batch_size: 4, device: cpu}}\n")
    return str(config), str(images / "strip.png")


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_eval_and_analyze_skip_a_strip_in_the_val_set_by_name(folder, tmp_path, capfd, command):
    checkpoint, onnx_path, *_ = folder
    config, strip = write_val_set(tmp_path)
    for weights in (checkpoint, onnx_path):
        out = tmp_path / f"{command}{weights.suffix}"
        code = main([command, config, "--weights", str(weights), "--out", str(out)])
        err = capfd.readouterr().err.strip().splitlines()
        assert code == 1, (command, weights.suffix, err)  # done, one val image skipped and named
        assert len(err) == 1 and err[0].startswith(f"WARNING: {strip} (image id 2) skipped: 1x2000 px"), err
        truth = json.loads((out / "ground_truth.json").read_text())
        assert sorted(image["file_name"] for image in truth["images"]) == sorted(
            str(tmp_path / "val" / name) for name in ("astronaut.png", "chelsea.png", "coffee.png"))


def test_serve_refuses_the_strip_by_name_and_goes_on(folder):
    pytest.importorskip("fastapi", reason="fastapi is not installed (pip install \"detector[serve]\")")
    from fastapi.testclient import TestClient

    from detector.serve import create_app

    checkpoint, onnx_path, images, strip = folder
    for weights in (checkpoint, onnx_path):
        client = TestClient(create_app(load_predictor(weights, "cpu"), weights.name))
        reply = client.post("/predict", files={"file": ("strip.png", strip.read_bytes(), "image/png")})
        assert reply.status_code == 422 and reply.json()["error"].startswith("strip.png: 1x2000 px"), reply.text
        photo = images / "c_chelsea.png"
        assert client.post("/predict", files={"file": ("cat.png", photo.read_bytes(), "image/png")}).status_code == 200
