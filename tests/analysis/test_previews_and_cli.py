"""End to end on tiny synthetic data: `detector data`, `detector analyze` (COCO files and a
checkpoint), the training previews (the loader's real batches, training unchanged by them)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from detector import build_model, load_config
from detector.analysis.detections import load_coco_files
from detector.analysis.errors import error_breakdown
from detector.analysis.previews import first_batches, training_loader
from detector.cli import main
from detector.config import config_to_dict
from detector.data import load_dataset
from detector.engine.checkpoint import save_checkpoint
from detector.engine.trainer import Trainer
from coco_cases import CocoCase


def tiny(tmp_path, *extra):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    return [
        "model.backbone.pretrained=false", "model.transform.min_size=96", "model.transform.max_size=128",
        "model.anchors.sizes=[[16, 32, 64]]", "model.rpn.pre_nms_top_n_train=100", "model.rpn.post_nms_top_n_train=50",
        "model.rpn.pre_nms_top_n_test=50", "model.rpn.post_nms_top_n_test=20", "model.roi_heads.batch_size_per_image=16",
        "data.train=" + synthetic.replace("NUM", "6").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "3").replace("SPLIT", "val"),
        "data.augment.hflip=0.5", "model.transform.train_min_sizes=[80, 96]", "data.workers=0", "train.batch_size=2",
        "train.epochs=1", "train.max_iters=2", "train.deterministic=true", "train.scheduler.warmup_iters=1",
        f"output={tmp_path / 'run'}", *extra]


def write_config(tmp_path, overrides) -> str:
    """A YAML config file holding the overrides (for the CLI, which takes a file)."""
    import yaml

    from detector.config import parse_override, set_dotted

    data: dict = {}
    for override in overrides:
        set_dotted(data, *parse_override(override))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_previews_are_the_loaders_first_batches_and_leave_it_as_it_was(tmp_path):
    config = load_config(None, tiny(tmp_path))
    dataset = load_dataset(config.data.train, augment=config.data.augment, seed=config.train.seed)
    loader = training_loader(config, dataset)
    torch.manual_seed(5)
    previews = first_batches(loader, 2)
    after_previews = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_previews, torch.rand(3))  # global random state put back
    loader.set_epoch(0)  # what the trainer does before epoch 0
    for (images, targets), (seen_images, seen_targets) in zip(previews, loader):
        assert all(torch.equal(a, b) for a, b in zip(images, seen_images))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, seen_targets))


def test_training_writes_previews_and_trains_the_same_without_them(tmp_path):
    with_previews = Trainer(load_config(None, tiny(tmp_path, "data.val=null", f"output={tmp_path / 'a'}")))
    with_previews.fit()
    for name in ("train_batch0.jpg", "train_batch1.jpg", "labels.png", "anchor_fit.png", "data_report.json"):
        assert (tmp_path / "a" / name).is_file(), name
    report = json.loads((tmp_path / "a" / "data_report.json").read_text())
    assert report["train"]["boxes"] == sum(int((~r.iscrowd).sum()) for r in with_previews.train_set.records)
    assert "looked at the data" in (tmp_path / "a" / "train.log").read_text()
    without = Trainer(load_config(None, tiny(tmp_path, "data.val=null", "train.previews=false", f"output={tmp_path / 'b'}")))
    without.fit()
    assert not (tmp_path / "b" / "train_batch0.jpg").exists()
    for name, value in with_previews.model.state_dict().items():
        assert torch.equal(value, without.model.state_dict()[name]), name


def test_detector_data_writes_the_report(tmp_path, capsys):
    overrides = tiny(tmp_path)
    assert main(["data", write_config(tmp_path, overrides), "--out", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "data" / "data_report.json").read_text())
    train = load_dataset(load_config(None, overrides).data.train)
    for label, name in enumerate(train.category_map.names, start=1):
        assert report["train"]["per_class"][name]["boxes"] == sum(int((r.labels == label).sum()) for r in train.records)
    assert report["val"]["images"] == 3
    shares = report["anchor_fit"]["overall"]
    assert shares["iou>=0.7"] + shares["0.3<=iou<0.7"] + shares["iou<0.3"] == pytest.approx(1.0)
    for name in ("labels.png", "anchor_fit.png", "train_batch0.jpg", "train_batch1.jpg"):
        assert (tmp_path / "data" / name).is_file(), name
    override = report["anchor_fit"]["suggested"]["override"]
    assert f"add: {override}" in printed
    assert load_config(None, override.split()).model.anchors.sizes == report["anchor_fit"]["suggested"]["sizes"]


def coco_files(tmp_path):
    """A ground-truth file with real image files, and a results file with known errors."""
    case = CocoCase()
    for index in range(3):
        image = case.image(160, 120, file_name=f"im{index}.jpg")
        cv2.imwrite(str(tmp_path / f"im{index}.jpg"), np.full((120, 160, 3), 40 * index, np.uint8))
        case.box(image, [10, 10, 60, 60], 1)
        case.box(image, [80, 20, 150, 100], 2)
        case.det(image, [10, 10, 60, 60], 1, 0.9)            # TP
        case.det(image, [80, 20, 150, 100], 1, 0.8 - index / 10)  # cls
        case.det(image, [100, 90, 110, 100], 2, 0.3)         # bkg
    (tmp_path / "gt.json").write_text(json.dumps(case.gt))
    (tmp_path / "pred.json").write_text(json.dumps(case.results))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def test_detector_analyze_coco_files(tmp_path, capsys):
    gt, predictions = coco_files(tmp_path)
    out = tmp_path / "analysis"
    assert main(["analyze", "--gt", str(gt), "--predictions", str(predictions), "--images", str(tmp_path),
                 "--out", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    breakdown = error_breakdown(load_coco_files(gt, predictions))
    assert result["errors"] == breakdown.to_json()
    assert {t: result["errors"][t]["count"] for t in ("cls", "bkg", "miss")} == {"cls": 3, "bkg": 3, "miss": 0}
    matrix = result["confusion_matrix"]
    assert matrix["labels"] == ["cat", "dog", "background"]
    assert matrix["score_threshold"] == result["operating_point"]["best_f1_threshold"]
    for name in ("errors.png", "confusion_matrix.png", "f1_curve.png", "worst_images.jpg"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert f"cls   classification        3  dAP50 {breakdown.delta_ap50['cls']:+.4f}" in printed


def test_detector_analyze_refuses_bad_inputs(tmp_path, capsys):
    gt, predictions = coco_files(tmp_path)
    assert main(["analyze", "--gt", str(gt)]) == 2
    assert "give either --gt and --predictions" in capsys.readouterr().err
    bad = json.loads(predictions.read_text())
    bad[1]["category_id"] = 9
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["analyze", "--gt", str(gt), "--predictions", str(tmp_path / "bad.json")]) == 2
    assert "detection 1 has category id 9" in capsys.readouterr().err


def test_detector_analyze_a_checkpoint(tmp_path, capsys):
    overrides = tiny(tmp_path)
    config = load_config(None, overrides + ["model.num_classes=4"])
    state = {"model": build_model(config).state_dict(), "config": config_to_dict(config),
             "categories": {"ids": [1, 2, 3, 4], "names": ["circle", "square", "triangle", "cross"]}}
    save_checkpoint(state, tmp_path / "w.pt")
    out = tmp_path / "checkpoint_analysis"
    assert main(["analyze", write_config(tmp_path, overrides), "--weights", str(tmp_path / "w.pt"),
                 "--out", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert (out / "predictions.json").is_file() and (out / "ground_truth.json").is_file()
    assert result["errors"] == error_breakdown(load_coco_files(out / "ground_truth.json", out / "predictions.json")).to_json()
    val_boxes = sum(len(json.loads((out / "ground_truth.json").read_text())["annotations"]) for _ in [0])
    assert sum(result["confusion_matrix"]["counts"][r][c] for r in range(4) for c in range(5)) == val_boxes


def test_detector_data_names_a_skipped_image_and_exits_1(tmp_path, capsys):
    """Exit 1 = done, some inputs skipped and named (docs/reliability.md, Exit codes): `data` too."""
    config = write_config(tmp_path, tiny(tmp_path))
    assert main(["data", config, "--out", str(tmp_path / "data")]) == 0  # draws the synthetic set
    missing = sorted((tmp_path / "synthetic" / "train" / "images").glob("*.jpg"))[0]
    missing.write_bytes(b"not a jpeg")  # unreadable (a missing file would make the synthetic set redraw itself)
    capsys.readouterr()
    assert main(["data", config, "--out", str(tmp_path / "data")]) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and missing.name in warnings[0], warnings
    report = json.loads((tmp_path / "data" / "data_report.json").read_text())
    assert len(report["skipped_images"]) == 1 and report["train"]["images"] == 5
