"""The training loop on a tiny synthetic set: accounting, run folder, checkpoints, resume,
non-finite losses, and the CLI on the result."""
import dataclasses
import json

import pytest
import torch

from detector import load_config
from detector.cli import main as cli
from detector.engine.checkpoint import load_checkpoint
from detector.inference.predictor import Predictor
from detector.engine.builders import Accounting
from detector.engine.trainer import Trainer
from detector.errors import NonFiniteLossError


def tiny_config(tmp_path, name="run", *extra):
    synthetic = f"{{format: synthetic, root: {tmp_path / 'synthetic'}, num_images: NUM, seed: 1, split: SPLIT}}"
    return load_config(None, [
        "model.transform.min_size=128", "model.transform.max_size=160",
        "model.anchors.sizes=[[32, 64, 128]]",
        "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=100",
        "model.rpn.pre_nms_top_n_test=100", "model.rpn.post_nms_top_n_test=50",
        "model.roi_heads.batch_size_per_image=32",
        "data.train=" + synthetic.replace("NUM", "6").replace("SPLIT", "train"),
        "data.val=" + synthetic.replace("NUM", "2").replace("SPLIT", "val"),
        "data.workers=0", "train.batch_size=2", "train.epochs=2", "train.deterministic=true",
        "train.scheduler.warmup_iters=2", "train.eval_every=2", "train.num_val_images_drawn=1", "train.log_every=1",
        "train.previews=false",  # the start-of-run pictures cost seconds; tests/analysis checks them
        f"output={tmp_path / name}", *extra,
    ])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    config = tiny_config(tmp_path)
    trainer = Trainer(config)
    metrics = trainer.fit()
    return tmp_path, config, metrics, trainer


def test_iterations_per_epoch_are_ceil_or_floor():
    assert Accounting(10, 4, False, 3, None).iters_per_epoch == 3  # ceil(10 / 4)
    assert Accounting(10, 4, True, 3, None).iters_per_epoch == 2  # floor with drop_last
    assert Accounting(12, 4, False, 3, None).total_iters == 9
    capped = Accounting(10, 4, False, 3, 7)
    assert capped.total_iters == 7 and capped.total_epochs == 3
    assert "10 training images, batch 4 -> 3 iterations per epoch (ceil(10 / 4)); 3 epochs -> 9 iterations" in Accounting(10, 4, False, 3, None).describe()


def test_the_callers_config_is_left_as_it_was(tmp_path):
    """The trainer sets model.num_classes from the data on its own copy, never on the caller's object."""
    config = tiny_config(tmp_path, "run", "data.val=null")
    before = dataclasses.asdict(config)
    trainer = Trainer(config)
    assert dataclasses.asdict(config) == before
    assert config.model.num_classes == 1 and trainer.config.model.num_classes == 4  # 4 classes in the synthetic set


def test_run_folder_tells_the_whole_story(finished_run):
    tmp_path, config, metrics, _ = finished_run
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "6 training images, batch 2 -> 3 iterations per epoch (ceil(6 / 2)); 2 epochs -> 6 iterations" in log
    for name in ("config.yaml", "results.csv", "metrics.json", "curves.png", "weights/last.pt", "weights/best.pt",
                 "eval/metrics.json", "eval/predictions.json", "eval/ground_truth.json", "eval/pr_curves.png"):
        assert (run / name).is_file(), name
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,iteration,lr,loss_objectness") and len(rows) == 3  # header + 2 epochs
    assert rows[2].split(",")[:2] == ["2", "6"]
    assert set(json.loads((run / "metrics.json").read_text())) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "per_class"}
    assert load_config(run / "config.yaml").model.num_classes == 4  # taken from the data

    state = load_checkpoint(run / "weights" / "last.pt")
    assert (state["epoch"], state["iteration"]) == (2, 6)
    assert state["categories"] == {"ids": [1, 2, 3, 4], "names": ["circle", "square", "triangle", "cross"]}
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "metrics", "version"} <= set(state)


def test_predictor_and_cli_use_the_checkpoint(finished_run, capsys):
    tmp_path, config, _, _ = finished_run
    weights = tmp_path / "run" / "weights" / "last.pt"
    predictor = Predictor.from_checkpoint(weights, score_thresh=0.0, max_detections=5)
    images = sorted((tmp_path / "synthetic" / "val" / "images").glob("*.jpg"))
    out = tmp_path / "predicted"
    assert cli(["predict", "--weights", str(weights), str(images[0].parent), "--out", str(out), "--score-thresh", "0.0",
                "--max-detections", "5"]) == 0
    written = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [entry["file"] for entry in written] == [str(p) for p in images]
    assert 0 < len(written[0]["detections"]) <= 5
    assert {d["name"] for entry in written for d in entry["detections"]} <= set(predictor.category_names)
    assert (out / f"{images[0].stem}.jpg").is_file()

    assert cli(["eval", str(tmp_path / "run" / "config.yaml"), "--weights", str(weights), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and (tmp_path / "ev" / "predictions.json").is_file()
    # model.* overrides change the checkpoint's test-time settings, and only those
    assert cli(["eval", str(tmp_path / "run" / "config.yaml"), "--weights", str(weights),
                "--out", str(tmp_path / "ev_soft"), "model.roi_heads.nms_method=gaussian"]) == 0  # after the options
    assert "test-time settings: model.roi_heads.nms_method=gaussian" in capsys.readouterr().out
    assert cli(["eval", str(tmp_path / "run" / "config.yaml"), "model.backbone.fpn=true", "--weights", str(weights)]) == 2
    assert "model.backbone.fpn: fixed by the checkpoint" in capsys.readouterr().err

    assert cli(["predict", "--weights", str(weights), str(tmp_path / "nothing_here"), "--out", str(tmp_path / "none")]) == 2
    assert "no such file or folder" in capsys.readouterr().err

    # a video in, an annotated video and per-frame detections out
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 120))
    for path in images[:1] * 3:
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 120)))
    writer.release()
    assert cli(["predict", "--weights", str(weights), str(video), "--out", str(tmp_path / "vid"), "--score-thresh", "0.0"]) == 0
    frames = json.loads((tmp_path / "vid" / "predictions.json").read_text())["predictions"][0]["frames"]
    assert len(frames) == 3 and (tmp_path / "vid" / "clip.mp4").stat().st_size > 0


def test_eval_passes_train_keep_freed_memory_to_the_predictor(finished_run, monkeypatch):
    tmp_path = finished_run[0]
    calls = []
    monkeypatch.setattr("detector.engine.allocator.keep_freed_memory", lambda: calls.append(1) or True)
    for value in ("true", "false"):
        assert cli(["eval", str(tmp_path / "run" / "config.yaml"), "--weights", str(tmp_path / "run" / "weights" / "last.pt"),
                    "--out", str(tmp_path / f"ev_{value}"), f"train.keep_freed_memory={value}"]) == 0
    assert calls == [1]  # the checkpoint's own setting (true) would have called it twice


def test_resume_mid_epoch_ends_with_the_same_weights(finished_run, tmp_path):
    """Stop a run inside its second epoch, resume it: the weights equal the uninterrupted run's."""
    reference = finished_run[3]  # the same config, run without interruption

    interrupted = Trainer(tiny_config(tmp_path, "interrupted", "train.checkpoint_every_iters=1"))
    forward = interrupted.model.forward

    def stop_at_iteration_5(*args, **kwargs):
        if interrupted.iteration == 4:  # 3 iterations per epoch: the second batch of epoch 2
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    interrupted.model.forward = stop_at_iteration_5
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    saved = load_checkpoint(tmp_path / "interrupted" / "weights" / "last.pt")
    assert (saved["epoch"], saved["iteration"], saved["batches_done_in_epoch"]) == (1, 4, 1)

    resumed = Trainer(tiny_config(tmp_path, "interrupted", "train.checkpoint_every_iters=1"), resume=True)
    resumed.fit()
    assert resumed.iteration == 6
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_non_finite_loss_stops_with_the_iteration_and_images(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    forward = trainer.model.forward

    def poisoned(images, targets=None):
        losses = forward(images, targets)
        losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return losses

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 1 \(epoch 1\): .*loss_box_reg=nan.*images: .*\.jpg"):
        trainer.fit()
    assert not (tmp_path / "run" / "weights" / "last.pt").exists()


def poison_forward(trainer, at_iterations, once=False):
    """Make the loss infinite when the trainer's forward runs at one of `at_iterations`
    (0-based); `once`: each of them only the first time."""
    forward, poisoned = trainer.model.forward, []

    def maybe_nan(images, targets=None):
        losses = forward(images, targets)
        if trainer.iteration in at_iterations and trainer.model.training:
            poisoned.append(trainer.iteration)
            if once:
                at_iterations.discard(trainer.iteration)
            losses["loss_classifier"] = losses["loss_classifier"] * float("inf")
        return losses

    trainer.model.forward = maybe_nan
    return poisoned


def test_rollback_reloads_last_checkpoint_with_a_lower_learning_rate(tmp_path):
    # no validation set: nothing here depends on it, and evaluating and plotting cost more than the training
    trainer = Trainer(tiny_config(tmp_path, "run", "train.non_finite=rollback", "train.rollback_lr_factor=0.25", "data.val=null"))
    base_lrs = list(trainer.scheduler.base_lrs)
    poisoned = poison_forward(trainer, at_iterations={4}, once=True)
    trainer.fit()
    assert poisoned == [4] and trainer.iteration == 6 and trainer.rollbacks == 1
    assert trainer.scheduler.base_lrs == pytest.approx([lr * 0.25 for lr in base_lrs])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "non-finite loss at iteration 5 (epoch 2)" in log
    assert "Rolled back to last.pt (iteration 3) with the learning rate x0.25 (rollback 1 of 3)" in log
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt")["rollbacks"] == 1


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.non_finite=rollback", "train.max_rollbacks=2", "data.val=null"))
    poisoned = poison_forward(trainer, at_iterations={0, 1, 2, 3, 4, 5})
    with pytest.raises(NonFiniteLossError, match=r"iteration 1 \(epoch 1\).*Gave up after 2 rollbacks"):
        trainer.fit()
    assert poisoned == [0, 0, 0]  # rolled back twice to the state saved before training


def test_train_compile_compiles_the_model_it_trains(tmp_path):
    plain, compiled = Trainer(tiny_config(tmp_path, "plain")), Trainer(tiny_config(tmp_path, "compiled", "train.compile=true"))
    assert plain.model.backbone._compiled_call_impl is None
    assert compiled.model.backbone._compiled_call_impl is not None and compiled.model.rpn.head._compiled_call_impl is not None


def test_train_keep_freed_memory_sets_the_allocator_on_the_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("detector.engine.builders.keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(tiny_config(tmp_path, "kept"))
    Trainer(tiny_config(tmp_path, "system", "train.keep_freed_memory=false"))
    assert calls == [1]  # the allocator itself is tested in test_allocator.py


def test_a_cascade_run_reports_every_stages_losses(tmp_path):
    """results.csv and the epoch means carry each Cascade R-CNN stage's losses, and "loss" is
    the sum the optimizer stepped on (it once left the stages out)."""
    trainer = Trainer(tiny_config(tmp_path, "cascade", "model.roi_heads.cascade_ious=[0.6]", "train.epochs=1",
                                  "data.val=null"))
    trainer.fit()
    header, row = (tmp_path / "cascade" / "results.csv").read_text().strip().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    names = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
             "loss_classifier_stage1", "loss_box_reg_stage1")
    assert trainer.model.loss_names() == names
    assert float(values["loss_classifier_stage1"]) > 0
    assert float(values["loss"]) == pytest.approx(sum(float(values[name]) for name in names), abs=1e-5)
