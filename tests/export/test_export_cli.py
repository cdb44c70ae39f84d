"""`detector export`, and `detector predict` / `detector eval` with `--weights model.onnx`: the
same files and numbers as with the checkpoint; COCO AP of the export equals PyTorch's."""
import json
import sys

import cv2
import numpy as np
import pytest

from detector.cli import main
from detector.data.synthetic import make_synthetic_dataset
from detector.engine.evaluator import evaluate
from export_helpers import CATEGORIES, assert_same_detections, eager_detections, photos, resized


def test_export_command_prints_the_signature(lite0, tmp_path, capsys):
    checkpoint, *_ = lite0
    out = tmp_path / "strict.onnx"
    assert main(["export", "--weights", str(checkpoint), "--out", str(out),
                 "--set", "model.roi_heads.score_thresh=0.3", "--set", "model.roi_heads.detections_per_img=20"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["input", "images", "float", "[batch,", "3,", "height,", "width]"]
    assert printed[1].split() == ["output", "boxes", "float", "[batch,", "20,", "4]"]
    assert printed[-1] == f"wrote {out}"
    from detector.inference.exported import OnnxPredictor

    strict = OnnxPredictor(out)
    assert json.loads(strict.metadata["score_thresh"]) == 0.3
    image = resized(photos()[0], (333, 517))
    full = lite0[2].predict([image])[0]
    keep = full["scores"] > 0.3
    assert_same_detections({k: full[k][keep][:20] for k in ("boxes", "scores", "labels")}, strict.predict([image])[0], "0.3")


def test_opset_below_16_and_onnx_settings_are_refused_in_one_line(lite0, tmp_path, capsys):
    checkpoint, onnx_path, *_ = lite0
    assert main(["export", "--weights", str(checkpoint), "--out", str(tmp_path / "x.onnx"), "--opset", "11"]) == 2
    assert capsys.readouterr().err.strip() == ("detector export: --opset 11: RoiAlign's coordinate mode needs "
                                               "opset >= 16")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photos()[1])
    assert main(["predict", "--weights", str(onnx_path), str(image), "--out", str(tmp_path / "p"),
                 "--set", "model.roi_heads.nms_method=gaussian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed inside an exported file" in err[0] and "--set KEY=VALUE" in err[0]


def test_predict_with_onnx_weights_writes_what_the_checkpoint_writes(lite0, tmp_path):
    checkpoint, onnx_path, *_ = lite0
    for index, photo in enumerate(photos()[:3]):
        cv2.imwrite(str(tmp_path / f"photo{index}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    results = {}
    for weights in (checkpoint, onnx_path):
        out = tmp_path / weights.suffix[1:]
        assert main(["predict", "--weights", str(weights), str(tmp_path / "*.png"), "--out", str(out), "--device", "cpu"]) == 0
        written = json.loads((out / "predictions.json").read_text())
        assert written["skipped"] == []
        results[weights.suffix] = written["predictions"]
        assert sorted(p.name for p in out.iterdir()) == ["photo0.jpg", "photo1.jpg", "photo2.jpg", "predictions.json",
                                                          "predictions.jsonl", "skipped.txt"]
    for eager, exported in zip(results[".pt"], results[".onnx"]):
        assert eager["file"] == exported["file"]
        as_arrays = lambda ds: {"boxes": np.array([d["bbox_xyxy"] for d in ds]).reshape(-1, 4),  # noqa: E731
                                "scores": np.array([d["score"] for d in ds]),
                                "labels": np.array([CATEGORIES["ids"].index(d["category_id"]) + 1 for d in ds])}
        # predictions.json rounds scores to 1e-4 and boxes to 1e-2: the criterion still holds.
        assert_same_detections(as_arrays(eager["detections"]), as_arrays(exported["detections"]), eager["file"])


def synthetic_val_config(folder, batch_size: int):
    """A config whose val set is 4 synthetic images of the checkpoint's 4 classes."""
    make_synthetic_dataset(folder / "synthetic", "val", num_images=4, seed=0)
    config = folder / "val.yaml"
    config.write_text(f"model: {{num_classes: 4}}\ndata:\n  val: {{format: synthetic, root: {folder / 'synthetic'}, "
                      f"split: val, num_images: 4, seed: 0}}\ntrain: {{batch_size: {batch_size}, device: cpu}}\n")
    return config


def for_both_weights(lite0, folder, command: str, config, result_file: str) -> dict:
    """`detector COMMAND CONFIG --weights W` for the checkpoint and its export: {".pt": json, ".onnx": json}."""
    results = {}
    for weights in lite0[:2]:
        out = folder / f"{command}{weights.suffix}"
        assert main([command, str(config), "--weights", str(weights), "--out", str(out)]) == 0
        results[weights.suffix] = json.loads((out / result_file).read_text())
    return results


def test_eval_with_onnx_weights_gives_the_checkpoints_metrics(lite0, tmp_path):
    metrics = for_both_weights(lite0, tmp_path, "eval", synthetic_val_config(tmp_path, batch_size=1), "metrics.json")
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[".onnx"][key] == pytest.approx(metrics[".pt"][key], abs=0.002), key


def test_coco_ap_of_the_export_equals_pytorchs_on_real_photos(lite0):
    """Ground truth: the PyTorch model's own confident boxes, each moved by up to 15% of its size
    (seeded), so AP sits mid-range, where it moves with every box the export loses, adds or
    shifts, at every IoU threshold from 0.5 to 0.95."""
    _, _, predictor, model = lite0
    images = [resized(photo, size) for photo in photos() for size in ((333, 517), (448, 224))]
    eager = [eager_detections(model, image) for image in images]
    exported = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in predictor.predict(images)]
    rng = np.random.default_rng(0)
    truth = []
    for i, (image, e) in enumerate(zip(images, eager)):
        boxes = e["boxes"][e["scores"] >= 0.3]
        sizes = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        truth.append({"file_name": f"{i}.jpg", "height": image.shape[0], "width": image.shape[1],
                      "boxes": boxes + rng.uniform(-0.15, 0.15, boxes.shape) * sizes,
                      "labels": e["labels"][e["scores"] >= 0.3]})
    assert sum(len(t["boxes"]) for t in truth) >= 5
    categories = list(zip(CATEGORIES["ids"], CATEGORIES["names"]))
    ap_eager = evaluate(truth, eager, categories)["AP"]
    ap_exported = evaluate(truth, exported, categories)["AP"]
    assert 0.1 < ap_eager < 0.9 and abs(ap_exported - ap_eager) <= 0.002


def test_without_the_extra_installed_export_and_onnx_weights_fail_in_one_line(lite0, tmp_path, capsys, monkeypatch):
    checkpoint, onnx_path, *_ = lite0
    for module in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, module, None)  # `import onnx` raises ImportError
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photos()[1])
    for args in (["export", "--weights", str(checkpoint), "--out", str(tmp_path / "x.onnx")],
                 ["predict", "--weights", str(onnx_path), str(image), "--out", str(tmp_path / "p")]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith('pip install "detector[export]"'), err


def test_analyze_with_onnx_weights_gives_the_checkpoints_analysis(lite0, tmp_path):
    """`analyze CONFIG --weights model.onnx` loads as eval does (it refused the file before)."""
    results = for_both_weights(lite0, tmp_path, "analyze", synthetic_val_config(tmp_path, batch_size=2), "analysis.json")
    assert results[".onnx"]["AP50"] == pytest.approx(results[".pt"]["AP50"], abs=0.002)
    assert results[".onnx"].keys() == results[".pt"].keys()
    assert results[".onnx"]["operating_point"]["per_class"].keys() == results[".pt"]["operating_point"]["per_class"].keys()


def test_every_command_takes_the_backend_and_refuses_what_does_not_fit_in_one_line(lite0, tmp_path, capsys):
    checkpoint, onnx_path, *_ = lite0
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), cv2.cvtColor(resized(photos()[1], (333, 517)), cv2.COLOR_RGB2BGR))
    refused = {
        (str(onnx_path), "--precision", "bf16"): "precision bf16: ONNX Runtime runs the file in f32; bf16 is an "
                                                 "OpenVINO option (--backend openvino)",
        (str(checkpoint), "--backend", "openvino"): f"--backend openvino: {checkpoint} is a PyTorch checkpoint",
        (str(checkpoint), "--precision", "bf16"): f"--precision bf16: {checkpoint} is a PyTorch checkpoint",
    }
    for (weights, *option), message in refused.items():
        assert main(["predict", "--weights", weights, str(image), "--out", str(tmp_path / "p"), *option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"detector predict: {message}"), err
    for command in ("eval", "analyze", "predict", "serve"):
        help_text = " ".join(main_help(command).split())
        assert "--backend {onnxruntime,openvino}" in help_text and "--precision {f32,bf16}" in help_text, command
    assert "keep detections scoring above this" in " ".join(main_help("predict").split())  # as the code keeps them


def main_help(command: str) -> str:
    from detector.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices[command].format_help()


def test_predict_with_openvino_writes_what_onnx_runtime_writes(lite0, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install \"detector[openvino]\")")
    _, onnx_path, *_ = lite0
    cv2.imwrite(str(tmp_path / "cat.png"), cv2.cvtColor(resized(photos()[1], (333, 517)), cv2.COLOR_RGB2BGR))
    written = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        assert main(["predict", "--weights", str(onnx_path), str(tmp_path / "cat.png"), "--out", str(out),
                     "--backend", backend, "--precision", "f32"]) == 0
        detections = json.loads((out / "predictions.json").read_text())["predictions"][0]["detections"]
        written[backend] = {"boxes": np.array([d["bbox_xyxy"] for d in detections]).reshape(-1, 4),
                            "scores": np.array([d["score"] for d in detections]),
                            "labels": np.array([d["category_id"] for d in detections])}
    assert len(written["openvino"]["scores"]) > 0
    assert_same_detections(written["onnxruntime"], written["openvino"], "OpenVINO f32 vs ONNX Runtime")
