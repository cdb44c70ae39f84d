"""The loop's hooks: called at their points, in order; early stopping on val AP (train.patience)."""
import pytest

from detector import ConfigError
from detector.engine.checkpoint import load_checkpoint
from detector.engine.hooks import Hook
from detector.engine.trainer import Trainer

from test_trainer import tiny_config


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def before_train(self, trainer):
        self.calls.append(("before_train", trainer.iteration))

    def after_step(self, trainer, losses):
        self.calls.append(("after_step", trainer.iteration, sorted(losses) if losses else None))

    def after_epoch(self, trainer, epoch_losses):
        self.calls.append(("after_epoch", trainer.epoch, bool(trainer.epoch_metrics)))

    def after_train(self, trainer):
        self.calls.append(("after_train", trainer.iteration))


def test_a_hook_is_called_at_every_point_of_the_loop_after_the_built_in_ones(tmp_path):
    recorder = Recorder()
    trainer = Trainer(tiny_config(tmp_path, "run", "train.max_iters=4"), hooks=[recorder])
    trainer.fit()
    losses = ["loss_box_reg", "loss_classifier", "loss_objectness", "loss_rpn_box_reg"]
    assert recorder.calls == [
        ("before_train", 0),
        ("after_step", 1, losses), ("after_step", 2, losses), ("after_step", 3, losses),
        ("after_epoch", 1, False),  # eval_every=2: no evaluation after epoch 1
        ("after_step", 4, losses),
        ("after_epoch", 2, True),  # the last epoch is always evaluated, before this hook runs
        ("after_train", 4),
    ]
    assert [type(h).__name__ for h in trainer.hooks] == ["EvaluationHook", "DashboardHook", "CheckpointHook", "LogHook",
                                                          "Recorder"]


def scripted_ap(trainer, values):
    """The val AP of each evaluation, in order: the hooks under test are real, the AP is chosen."""
    aps = iter(values)

    def evaluate():
        return {"AP": next(aps), "AP50": 0.0, "AP75": 0.0, "epoch": trainer.epoch}

    trainer.evaluate = evaluate


def test_early_stopping_ends_the_run_patience_epochs_after_the_best(tmp_path):
    config = tiny_config(tmp_path, "run", "train.epochs=8", "train.eval_every=1", "train.patience=2")
    trainer = Trainer(config)
    scripted_ap(trainer, [0.1, 0.3, 0.2, 0.25, 0.9, 0.9, 0.9, 0.9])
    trainer.fit()
    assert (trainer.epoch, trainer.best_epoch, trainer.best_ap) == (4, 2, 0.3)  # never saw the 0.9
    run = tmp_path / "run"
    assert load_checkpoint(run / "weights" / "best.pt")["epoch"] == 2
    assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == 4
    assert len((run / "results.csv").read_text().strip().splitlines()) == 1 + 4
    assert ("early stop: val AP has not improved for 2 epochs (train.patience=2); best AP 0.3000 at epoch 2, "
            "kept in best.pt") in (run / "train.log").read_text()


def test_without_patience_the_run_goes_to_the_end(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", "train.epochs=3", "train.eval_every=1", "data.cache=ram"))
    scripted_ap(trainer, [0.3, 0.1, 0.1])
    trainer.fit()
    assert trainer.epoch == 3 and trainer.best_epoch == 1
    assert all(image is not None for image in trainer.train_set.cached_images)  # data.cache=ram, used by the run
    assert "data.cache: ram: train images decoded once" in (tmp_path / "run" / "train.log").read_text()


def test_early_stopping_state_survives_resume(tmp_path):
    config = tiny_config(tmp_path, "run", "train.epochs=6", "train.eval_every=1", "train.patience=3", "train.max_iters=9")
    first = Trainer(config)
    scripted_ap(first, [0.5, 0.2, 0.2])
    first.fit()  # max_iters: stops after 3 epochs, 2 without improvement
    resumed = Trainer(tiny_config(tmp_path, "run", "train.epochs=6", "train.eval_every=1", "train.patience=3"), resume=True)
    assert (resumed.best_epoch, resumed.best_ap) == (1, 0.5)
    scripted_ap(resumed, [0.2, 0.2, 0.2])
    resumed.fit()
    assert resumed.epoch == 4  # the third epoch without improvement, counted across the resume


def test_patience_without_a_val_set_is_refused_naming_the_keys(tmp_path):
    with pytest.raises(ConfigError, match="train.patience: .* needs data.val"):
        Trainer(tiny_config(tmp_path, "run", "train.patience=2", "data.val=null"))
