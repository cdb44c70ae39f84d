"""The trainer with data.tiles and inference.slice: crops in the accounting, whole val images
scored sliced, AP by size with its counts in metrics.json and the log."""
import json

from detector import load_config
from detector.engine.evaluation import validation_model
from detector.engine.trainer import Trainer
from detector.inference.slicing import SlicedModel


def tiles_config(tmp_path, *extra):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    return load_config(None, [
        "model.transform.min_size=128", "model.transform.max_size=160", "model.anchors.sizes=[[16, 32, 64]]",
        "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=100",
        "model.rpn.pre_nms_top_n_test=100", "model.rpn.post_nms_top_n_test=50",
        "model.roi_heads.batch_size_per_image=32",
        "data.train=" + synthetic.replace("NUM", "3").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "1").replace("SPLIT", "val"),
        "data.tiles.size=192", "data.tiles.overlap=0.2", "data.tiles.negative_ratio=0.5",
        "inference.slice.size=192", "inference.slice.overlap=0.2",
        "data.workers=0", "train.batch_size=2", "train.epochs=1", "train.max_iters=2", "train.deterministic=true",
        "train.scheduler.warmup_iters=1", "train.num_val_images_drawn=0", "train.previews=false",
        f"output={tmp_path / 'run'}", *extra])


def test_a_run_on_tiles_counts_crops_and_scores_whole_val_images_sliced(tmp_path):
    trainer = Trainer(tiles_config(tmp_path))
    metrics = trainer.fit()
    tiled = trainer.train_set
    log = (tmp_path / "run" / "train.log").read_text()
    crops = len(tiled)
    assert f"{crops} training crops (data.tiles: 3 images x {crops / 3:.1f} crops per image), batch 2" in log
    assert f"3 images x {sum(tiled.tiles_per_image) / 3:.1f} tiles per image = {sum(tiled.tiles_per_image)} crops" in log
    assert "validation: whole images, sliced: 192 px tiles" in log
    assert all(r.width <= 192 and r.height <= 192 for r in tiled.records)

    # Scored on the whole val image: its ground truth is the record's, counted by COCO size.
    record = trainer.val_set.records[0]
    area = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["size_counts"] == metrics["size_counts"]
    assert metrics["size_counts"]["small"]["ground_truth"] == int((area <= 32**2).sum())
    assert metrics["size_counts"]["large"]["ground_truth"] == int((area >= 96**2).sum())
    ground_truth = json.loads((tmp_path / "run" / "eval" / "ground_truth.json").read_text())
    assert [(i["width"], i["height"]) for i in ground_truth["images"]] == [(record.width, record.height)]
    assert "size          AP  GT boxes  detections" in log and "\n  small " in log


def test_the_val_set_is_predicted_sliced_only_when_inference_slice_is_on(tmp_path):
    config = tiles_config(tmp_path)
    model = object()
    sliced = validation_model(model, config)
    assert isinstance(sliced, SlicedModel) and sliced.model is model
    assert (sliced.settings.size, sliced.settings.overlap) == (192, 0.2)
    config.inference.slice.size = 0
    assert validation_model(model, config) is model
