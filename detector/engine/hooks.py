"""Hooks: what happens around the training loop, outside the optimisation itself.

The loop (`Trainer.fit`) only trains; evaluation, checkpoints, logging and early stopping are
small objects called at fixed points, in list order (detectron2's HookBase is the model):

    before_train(trainer)                   once, before the first iteration
    after_step(trainer, losses)             after every iteration (losses: None when no image of
                                            the batch could be read)
    after_epoch(trainer, epoch_losses)      after every epoch (epoch_losses: means, time, images/s)
    after_train(trainer)                    once, when the loop ends (done or stopped early)

A hook reads the trainer's state and may write three things to it: `epoch_metrics` (the
evaluation of this epoch), `best_ap` / `best_epoch`, and `stop_reason` (the loop ends after the
current epoch's hooks when it is set). Adding a behaviour is one new hook, its config key and
its test; `early_stopping.py` is one.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from detector.engine import distributed

if TYPE_CHECKING:
    from detector.engine.trainer import Trainer

class Hook:
    """Base class: every method does nothing, override the ones you need."""

    def before_train(self, trainer: Trainer) -> None:
        """Once, at the start of `fit()`, before its first iteration (a resumed run's too)."""
        pass

    def after_step(self, trainer: Trainer, losses: dict | None) -> None:
        """After every iteration (`trainer.iteration` already counts it); `losses`: the model's losses
        as tensors (`model.loss_names()`), None when no image of the batch could be read."""
        pass

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        """After every epoch (`trainer.epoch` already counts it); `epoch_losses`: the mean of each
        loss and their sum ("loss"), "time" (s) and "images_per_s"."""
        pass

    def after_train(self, trainer: Trainer) -> None:
        """Once, when the loop ends: all iterations done or `stop_reason` set (not on an exception)."""
        pass


class PreviewsHook(Hook):
    """At the start of a fresh run (not a resumed one): the first training batches drawn with their
    boxes and class names, and the label statistics (analysis/previews.py), so that a wrong label
    mapping or a broken augmentation shows before hours are spent."""

    def before_train(self, trainer: Trainer) -> None:
        if trainer.iteration or not distributed.is_main():
            return
        from detector.analysis.previews import write_training_previews

        written = write_training_previews(trainer.config, trainer.loader, trainer.run_dir)
        trainer.log.info(f"looked at the data: {', '.join(p.name for p in written)} in {trainer.run_dir}")


class EvaluationHook(Hook):
    """COCO mAP on the val set every `train.eval_every` epochs and after the last one; keeps
    the best AP and its epoch."""

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        trainer.epoch_metrics = {}
        if trainer.val_set is None:
            return
        last_epoch = trainer.iteration >= trainer.accounting.total_iters
        if trainer.epoch % trainer.config.train.eval_every == 0 or last_epoch:
            metrics = trainer.evaluate()
            trainer.epoch_metrics = trainer.latest_metrics = metrics
            if (metrics["AP"] or 0.0) > trainer.best_ap:
                trainer.best_ap, trainer.best_epoch = metrics["AP"] or 0.0, trainer.epoch


class CheckpointHook(Hook):
    """`last.pt` every epoch (and every `train.checkpoint_every_iters` iterations), `best.pt` and
    `metrics.json` when this epoch's AP is the best so far; before training, a first `last.pt`
    when `train.non_finite: rollback` needs something to roll back to."""

    def before_train(self, trainer: Trainer) -> None:
        if trainer.config.train.non_finite == "rollback" and not (trainer.weights_dir / "last.pt").exists():
            trainer.save(trainer.state(), "last.pt")

    def after_step(self, trainer: Trainer, losses: dict | None) -> None:
        every = trainer.config.train.checkpoint_every_iters
        if every and trainer.iteration % every == 0:
            trainer.save(trainer.state(), "last.pt")

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        metrics = trainer.epoch_metrics
        state = trainer.state(metrics)
        trainer.save(state, "last.pt")
        if metrics and trainer.best_epoch == trainer.epoch:
            trainer.save(state, "best.pt")
            if distributed.is_main():
                (trainer.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))  # the best epoch's


class LogHook(Hook):
    """Losses, learning rate and sampled fg/bg counts every `train.log_every` iterations in
    train.log; one row of results.csv (and curves.png) per epoch. TensorBoard / MLflow: dashboards.py."""

    def after_step(self, trainer: Trainer, losses: dict | None) -> None:
        if losses is None or trainer.iteration % trainer.config.train.log_every:
            return
        model = trainer.model
        values = {k: v.item() for k, v in losses.items()}
        trainer.log.scalars({**values, "loss": sum(values.values()), "lr": trainer.base_lr(),
                             **model.rpn.last_sampled_counts, **model.roi_heads.last_sampled_counts}, trainer.iteration)

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        metrics = trainer.epoch_metrics
        trainer.log.results_row({
            "epoch": trainer.epoch, "iteration": trainer.iteration, "lr": trainer.base_lr(),
            **{k: round(v, 6) for k, v in epoch_losses.items() if k in trainer.loss_names or k == "loss"},
            "AP": metrics.get("AP", ""), "AP50": metrics.get("AP50", ""), "time": round(epoch_losses["time"], 1),
            "images_per_s": round(epoch_losses["images_per_s"], 2),
        })
