"""TensorBoard and MLflow (engine/dashboards.py): the event file read back with TensorBoard's own
reader, curves continuous across an interruption and a rollback, the same scalars in an MLflow
file store, and one line naming the extra when a package is missing."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.config import save_config
from detector.engine.dashboards import drawn_val_images, read_rgb
from detector.engine.trainer import Trainer
from detector.errors import ConfigError, MissingDependencyError

from test_trainer import poison_forward, tiny_config

pytest.importorskip("tensorboard",
                    reason='TensorBoard tests need the tensorboard package: pip install "detector[tensorboard]"')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

LOSSES = ("train/loss_objectness", "train/loss_rpn_box_reg", "train/loss_classifier", "train/loss_box_reg")
# Tags whose values repeat exactly in a deterministic run (not time or memory).
REPEATABLE = ("train/", "sampling/", "val/")
WATCHED = ("train.tensorboard=true", "train.eval_every=1", "train.optimizer.backbone_lr_mult=0.5")


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})  # 0: keep all
    events.Reload()
    return events


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} in the order TensorBoard shows them, stale points dropped."""
    events = read_events(run_dir)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steps(curve: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in curve]


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """A 6-iteration run (3 per epoch) evaluated after each epoch, with a backbone learning rate of
    half the heads'; the uninterrupted reference of the resume tests."""
    tmp_path = tmp_path_factory.mktemp("watched")
    trainer = Trainer(tiny_config(tmp_path, "run", *WATCHED))
    trainer.fit()
    return tmp_path, trainer


def test_every_scalar_is_logged_at_every_iteration(watched_run):
    tmp_path, trainer = watched_run
    run = tmp_path / "run"
    found = curves(run)
    every_step = [1, 2, 3, 4, 5, 6]  # train.log_every=1
    for tag in (*LOSSES, "train/loss", "train/lr", "train/lr_backbone", "train/grad_norm", "memory/peak_rss_mb",
                "sampling/rpn_fg", "sampling/rpn_bg", "sampling/roi_fg", "sampling/roi_bg"):
        assert steps(found[tag]) == every_step, tag
    # The first iteration of each epoch also pays for start-up / evaluation and checkpoints: not timed.
    assert steps(found["speed/images_per_s"]) == [2, 3, 5, 6]
    assert all(value > 0 for _, value in found["speed/images_per_s"])
    assert all(value > 100 for _, value in found["memory/peak_rss_mb"])  # a Python process with torch loaded
    assert "memory/cuda_max_allocated_mb" not in found  # on the CPU

    for (_, total), *parts in zip(found["train/loss"], *(found[tag] for tag in LOSSES)):
        assert total == pytest.approx(sum(value for _, value in parts), rel=1e-6)
    for (_, heads), (_, backbone) in zip(found["train/lr"], found["train/lr_backbone"]):
        assert backbone == pytest.approx(0.5 * heads, rel=1e-6)  # optimizer.backbone_lr_mult=0.5
    assert found["train/lr"][-1][1] == pytest.approx(trainer.base_lr(), rel=1e-6)
    assert all(value > 0 for _, value in found["train/grad_norm"])

    # results.csv holds the same epochs: its lr and AP at iterations 3 and 6.
    rows = [line.split(",") for line in (run / "results.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    column = {name: index for index, name in enumerate(header)}
    lr_at = dict(found["train/lr"])
    for row in rows:
        assert lr_at[int(row[column["iteration"]])] == pytest.approx(float(row[column["lr"]]), rel=1e-6)
    for tag in ("val/AP", "val/AP50", "val/AP75", "val/AR100"):
        assert steps(found[tag]) == [3, 6], tag
    assert [value for _, value in found["val/AP"]] == pytest.approx([float(row[column["AP"]]) for row in rows], abs=1e-6)
    assert found["val/AP"][-1][1] == pytest.approx(trainer.latest_metrics["AP"], abs=1e-6)


def test_a_drawn_val_image_per_evaluation(watched_run):
    tmp_path, trainer = watched_run
    events = read_events(tmp_path / "run")
    drawn = sorted((tmp_path / "run" / "eval").glob("val_*.jpg"))
    assert len(drawn) == 1  # train.num_val_images_drawn=1
    tag = f"val_predictions/{drawn[0].stem}"
    assert events.Tags()["images"] == [tag]
    bgr = cv2.imread(str(drawn[0]))
    height, width = bgr.shape[:2]
    logged = events.Images(tag)
    assert [(e.step, e.width, e.height) for e in logged] == [(3, width, height), (6, width, height)]
    # The last one is the file evaluation.py drew, pixel for pixel (TensorBoard stores PNG: lossless).
    shown = cv2.imdecode(np.frombuffer(logged[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(shown, bgr)


def test_only_the_latest_evaluations_drawings_are_sent_and_large_ones_shrink(tmp_path):
    stale, scores, fresh = tmp_path / "val_7_gone.jpg", tmp_path / "metrics.json", tmp_path / "val_0_kept.jpg"
    cv2.imwrite(str(stale), np.zeros((1500, 2000, 3), np.uint8))
    os.utime(stale, ns=(10**18, 10**18))  # an earlier evaluation's
    scores.write_text("{}")
    os.utime(scores, ns=(2 * 10**18, 2 * 10**18))
    cv2.imwrite(str(fresh), np.full((1500, 2000, 3), (0, 0, 255), np.uint8))  # red in BGR
    os.utime(fresh, ns=(2 * 10**18, 2 * 10**18))  # the same tick as metrics.json: a coarse file system
    assert drawn_val_images(tmp_path) == [fresh]
    image = read_rgb(fresh)
    assert image.shape == (768, 1024, 3)  # the longer side at MAX_IMAGE_SIDE, the aspect ratio kept
    red, green, blue = image[384, 512].tolist()
    assert red > 250 and green < 5 and blue < 5  # RGB (up to JPEG's rounding)


def assert_same_curves(resumed: dict, reference: dict) -> None:
    """Each step once, and the reference's value at it, for every repeatable tag."""
    assert set(resumed) == set(reference)
    for tag, curve in resumed.items():
        assert len(set(steps(curve))) == len(curve), f"{tag}: a step logged twice: {steps(curve)}"
        if tag.startswith(REPEATABLE):
            assert curve == reference[tag], tag
        elif tag != "speed/images_per_s":  # the resumed run's first iteration is not timed
            assert steps(curve) == steps(reference[tag]), tag


def test_resumed_curves_have_every_step_once_with_the_uninterrupted_values(watched_run, tmp_path):
    reference = curves(watched_run[0] / "run")
    interrupted = Trainer(tiny_config(tmp_path, "run", *WATCHED))
    forward = interrupted.model.forward

    def stop_in_iteration_5(*args, **kwargs):
        if interrupted.iteration == 4 and interrupted.model.training:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    interrupted.model.forward = stop_in_iteration_5
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    # last.pt is the end of epoch 1 (iteration 3); iteration 4 was logged after it, and will run again.
    assert steps(curves(tmp_path / "run")["train/loss"]) == [1, 2, 3, 4]

    Trainer(tiny_config(tmp_path, "run", *WATCHED), resume=True).fit()
    resumed = curves(tmp_path / "run")
    assert steps(resumed["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert_same_curves(resumed, reference)


def test_a_rollback_replaces_the_abandoned_steps(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.tensorboard=true", "train.non_finite=rollback",
                                  "train.rollback_lr_factor=0.25", "data.val=null"))
    poisoned = poison_forward(trainer, at_iterations={4}, once=True)
    trainer.fit()
    assert poisoned == [4] and trainer.rollbacks == 1
    found = curves(tmp_path / "run")
    assert steps(found["train/loss"]) == [1, 2, 3, 4, 5, 6]
    lr = dict(found["train/lr"])
    # Step 4 was logged at lr 0.01 before iteration 5 failed; after rolling back to iteration 3
    # it ran again at a quarter of it, and only that point is left.
    assert lr[3] == pytest.approx(0.01, rel=1e-6)
    assert lr[4] == pytest.approx(0.25 * lr[3], rel=1e-6)


def test_tensorboard_false_writes_no_events(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.tensorboard=false", "data.val=null", "train.max_iters=1"))
    trainer.fit()
    assert not (tmp_path / "run" / "tensorboard").exists()


# ---------------------------------------------------------------- missing packages


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what Python does for a package that is not installed
    with pytest.raises(MissingDependencyError, match=r"^train.tensorboard: true needs the Python package 'tensorboard': "
                                                     r'pip install "detector\[tensorboard\]"$'):
        Trainer(tiny_config(tmp_path, "run", "train.tensorboard=true"))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"^train.mlflow needs the Python package 'mlflow': "
                                                     r'pip install "detector\[mlflow\]"$'):
        Trainer(tiny_config(tmp_path, "run", "train.tensorboard=false", f"train.mlflow={(tmp_path / 'mlruns').as_uri()}"))
    # null: on when installed, so off here, and the run goes on
    trainer = Trainer(tiny_config(tmp_path, "quiet", "data.val=null", "train.max_iters=1"))
    trainer.fit()
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    assert 'TensorBoard: off, the package is not installed (pip install "detector[tensorboard]")' in \
        (tmp_path / "quiet" / "train.log").read_text()


def test_cli_train_without_the_package_exits_2_with_one_line(tmp_path):
    save_config(tiny_config(tmp_path, "run", "train.tensorboard=true"), tmp_path / "run.yaml")
    code = ("import sys; sys.modules['tensorboard'] = None; from detector.cli import main; "
            f"sys.exit(main(['train', {str(tmp_path / 'run.yaml')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == ("detector train: train.tensorboard: true needs the Python package 'tensorboard': "
                           'pip install "detector[tensorboard]"\n')


# ---------------------------------------------------------------- MLflow


def mlflow_or_skip():
    return pytest.importorskip("mlflow", reason='MLflow tests need the extra mlflow: pip install "detector[mlflow]"')


def test_mlflow_gets_the_scalars_the_config_and_the_run_folder_and_a_resume_continues_its_run(tmp_path):
    mlflow = mlflow_or_skip()
    uri = (tmp_path / "mlruns").as_uri()  # file:///...: a local file store
    watched = (*WATCHED, f"train.mlflow={uri}", "train.mlflow_experiment=tiny")
    interrupted = Trainer(tiny_config(tmp_path, "run", *watched))
    forward = interrupted.model.forward

    def stop_in_iteration_5(*args, **kwargs):
        if interrupted.iteration == 4 and interrupted.model.training:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    interrupted.model.forward = stop_in_iteration_5
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    Trainer(tiny_config(tmp_path, "run", *watched), resume=True).fit()

    run_dir = tmp_path / "run"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])  # the resumed run continued the same MLflow run
    assert run.info.run_id == json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"

    # The same scalars as TensorBoard; MLflow keeps both values of step 4 (logged before the
    # interruption and again after the resume): the later one is the one TensorBoard shows.
    tensorboard = curves(run_dir)
    assert set(run.data.metrics) == set(tensorboard)
    for tag, curve in tensorboard.items():
        history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: (m.step, m.timestamp))
        latest = {m.step: m.value for m in history}
        assert sorted(latest) == steps(curve), tag
        if tag.startswith(REPEATABLE):
            assert [latest[step] for step in steps(curve)] == pytest.approx([v for _, v in curve], rel=1e-6), tag

    params = run.data.params
    assert params["train.batch_size"] == "2" and params["model.transform.min_size"] == "128"
    assert params["train.optimizer.backbone_lr_mult"] == "0.5" and params["model.num_classes"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results.csv", "train.log", "weights", "tensorboard", "eval"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} >= {"weights/last.pt", "weights/best.pt"}


def test_an_unusable_mlflow_uri_is_one_line_naming_the_key(tmp_path):
    mlflow_or_skip()
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    uri = (blocked / "mlruns").as_uri()  # a folder inside a file: cannot be made
    trainer = Trainer(tiny_config(tmp_path, "run", "train.tensorboard=false", f"train.mlflow={uri}", "data.val=null",
                                  "train.max_iters=1"))
    with pytest.raises(ConfigError, match=rf"^train\.mlflow: cannot start an MLflow run at {re.escape(uri)}: ") as error:
        trainer.fit()
    assert "\n" not in str(error.value)


def test_a_lost_mlflow_store_is_a_warning_and_training_goes_on_without_it(tmp_path):
    mlflow_or_skip()
    from detector.engine.mlflow_log import MLflowWriter

    warnings = []
    store = tmp_path / "mlruns"
    (tmp_path / "run").mkdir()
    writer = MLflowWriter(store.as_uri(), "lost", tmp_path / "run", {"train.seed": "0"}, resuming=False,
                          warn=warnings.append)
    writer.scalars({"train/loss": 1.0}, 1)
    assert warnings == []
    shutil.rmtree(store)  # the store goes away mid-run, as a server can
    writer.scalars({"train/loss": 0.9}, 2)
    writer.scalars({"train/loss": 0.8}, 3)  # not sent: each try would block training for the client's retries
    assert len(warnings) == 1
    assert warnings[0].startswith(f"train.mlflow: {store.as_uri()}: ")
    assert warnings[0].endswith("; training goes on without sending MLflow more points")
    writer.close(tmp_path / "run")  # tried once more, in case the server is back; here the store is still gone
    assert warnings[1:] == [f"train.mlflow: {store.as_uri()}: '{store}' does not exist; the run folder was not uploaded"]


def test_resuming_a_run_whose_mlflow_run_was_deleted_starts_a_new_one(tmp_path):
    mlflow = mlflow_or_skip()
    from detector.engine.mlflow_log import MLflowWriter

    warnings, uri, run_dir = [], (tmp_path / "mlruns").as_uri(), tmp_path / "run"
    run_dir.mkdir()
    first = MLflowWriter(uri, "gone", run_dir, {"train.seed": "0"}, resuming=False, warn=warnings.append)
    mlflow.MlflowClient(tracking_uri=uri).delete_run(first.run_id)
    second = MLflowWriter(uri, "gone", run_dir, {"train.seed": "0"}, resuming=True, warn=warnings.append)
    assert second.run_id != first.run_id
    assert json.loads((run_dir / "mlflow_run.json").read_text()) == {"uri": uri, "run_id": second.run_id}
    assert len(warnings) == 1 and warnings[0].startswith(f"train.mlflow: cannot continue MLflow run {first.run_id} (")
    assert warnings[0].endswith("); starting a new one")
