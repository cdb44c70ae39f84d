"""A run you can watch while it trains: `DashboardHook` collects the numbers at three points of
the loop and hands them to each dashboard the config asks for, TensorBoard (tensorboard_log.py,
`train.tensorboard`) and MLflow (mlflow_log.py, `train.mlflow`). The tags:

    every train.log_every iterations    train/loss (the sum), train/loss_objectness, train/loss_rpn_box_reg,
                                        train/loss_classifier, train/loss_box_reg,
                                        train/lr (the new layers'), train/lr_backbone (when it differs),
                                        train/grad_norm (before clipping; on iterations that step the optimizer),
                                        sampling/rpn_fg, rpn_bg, roi_fg, roi_bg (anchors / proposals sampled per image),
                                        speed/images_per_s (training images per second of wall time since the
                                        last point; not timed: the first iteration of a run and of each epoch,
                                        which also pay for start-up, evaluation, checkpoints and plots),
                                        memory/peak_rss_mb,
                                        memory/cuda_max_allocated_mb (on a GPU)
    after each evaluation               val/AP, val/AP50, val/AP75, val/APs, val/APm, val/APl, val/AR100
                                        (those COCO can define), val_predictions/<image> (TensorBoard)
    at the end                          the writers closed; MLflow gets the run folder as artifacts

The step is the global iteration: the number of iterations completed, as in train.log and
`last.pt`. The losses are those of this process's batch. Only rank 0 writes.

The hook runs before CheckpointHook, and each writer has its points on disk before it returns:
a checkpoint at step s is never newer than the logged points up to s, so a resumed run (first
step s + 1) has no gap.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from detector.config import TrainConfig, config_to_dict
from detector.dependencies import require
from detector.engine import distributed
from detector.engine.hooks import Hook
from detector.engine.mlflow_log import MLflowWriter, flatten_params
from detector.engine.tensorboard_log import TENSORBOARD_FOLDER, TensorBoardWriter, wants_tensorboard

try:
    import resource  # POSIX only
except ImportError:
    resource = None

if TYPE_CHECKING:
    from detector.engine.trainer import Trainer

VAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
MAX_IMAGE_SIDE = 1024  # drawn val images are shrunk to this: event files stay small with large photos


def check_dashboards(train: TrainConfig) -> None:
    """Before anything is built: the package each dashboard asked for is installed (else one line
    naming the extra)."""
    wants_tensorboard(train.tensorboard)
    if train.mlflow:
        require("mlflow", "mlflow", "train.mlflow")


class DashboardHook(Hook):
    """The module docstring's points, to the writers `before_train` opens on rank 0 (none when
    both dashboards are off)."""

    def __init__(self) -> None:
        self.writers: list = []
        self.last_iteration = 0  # of the previous after_step: a smaller one after it means a rollback
        self.interval_start = 0.0  # wall time of the last scalar point (or of the start)
        self.interval_images = 0  # images trained on since then
        self.untimed_step_next = True  # the next iteration also pays for start-up or the end of an epoch

    def before_train(self, trainer: Trainer) -> None:
        if not distributed.is_main():
            return
        train = trainer.config.train
        first_step = trainer.iteration + 1
        if wants_tensorboard(train.tensorboard):
            log_dir = trainer.run_dir / TENSORBOARD_FOLDER
            self.writers.append(TensorBoardWriter(log_dir, first_step))
            trainer.log.info(f"TensorBoard: tensorboard --logdir {log_dir}")
        elif train.tensorboard is None:
            trainer.log.info('TensorBoard: off, the package is not installed (pip install "detector[tensorboard]")')
        if train.mlflow:
            writer = MLflowWriter(train.mlflow, train.mlflow_experiment, trainer.run_dir,
                                  flatten_params(config_to_dict(trainer.config)), resuming=trainer.iteration > 0,
                                  warn=trainer.log.warning)
            self.writers.append(writer)
            trainer.log.info(f"MLflow: run {writer.run_id} of experiment {train.mlflow_experiment!r} at {train.mlflow}")
        self.last_iteration = trainer.iteration
        self.restart_interval()

    def after_step(self, trainer: Trainer, losses: dict | None) -> None:
        if not self.writers:
            return
        if trainer.iteration <= self.last_iteration:  # rolled back to last.pt: these steps run again
            for writer in self.writers:
                writer.restart_at(trainer.iteration)
            self.untimed_step_next = True  # it also paid for reloading last.pt
        self.last_iteration = trainer.iteration
        if self.untimed_step_next:
            self.untimed_step_next = False
            self.restart_interval()  # timing starts after it
        elif losses is not None:
            self.interval_images += trainer.batch_images
        if losses is None or trainer.iteration % trainer.config.train.log_every:
            return
        self.write_scalars(self.training_scalars(trainer, losses), trainer.iteration)
        self.restart_interval()

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        self.untimed_step_next = True
        metrics = trainer.epoch_metrics
        if not self.writers or not metrics:
            return
        self.write_scalars({f"val/{key}": metrics[key] for key in VAL_METRICS if metrics.get(key) is not None},
                           trainer.iteration)
        images = {f"val_predictions/{path.stem}": read_rgb(path) for path in drawn_val_images(trainer.run_dir / "eval")}
        for writer in self.writers:
            writer.images(images, trainer.iteration)

    def after_train(self, trainer: Trainer) -> None:
        for writer in self.writers:  # TensorBoard first: its files are closed before MLflow copies the folder
            writer.close(trainer.run_dir)
        self.writers = []

    # ------------------------------------------------------------------ the numbers

    def training_scalars(self, trainer: Trainer, losses: dict) -> dict[str, float]:
        values = {f"train/{key}": value.item() for key, value in losses.items()}
        values["train/loss"] = sum(values.values())
        values.update(learning_rates(trainer.optimizer))
        if trainer.grad_norm is not None:
            values["train/grad_norm"] = float(trainer.grad_norm)
        model = trainer.model
        for key, value in {**model.rpn.last_sampled_counts, **model.roi_heads.last_sampled_counts}.items():
            values[f"sampling/{key}"] = value
        if self.interval_images:  # none timed since the last point when it was the epoch's first iteration
            seconds = time.perf_counter() - self.interval_start
            values["speed/images_per_s"] = self.interval_images * trainer.world_size / max(seconds, 1e-9)
        values.update(memory_in_use(trainer.device))
        return values

    def write_scalars(self, values: dict[str, float], step: int) -> None:
        for writer in self.writers:
            writer.scalars(values, step)

    def restart_interval(self) -> None:
        self.interval_start, self.interval_images = time.perf_counter(), 0


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """train/lr: the new layers' (RPN, ROI heads, FPN), as train.log prints it; train/lr_backbone
    too when the pretrained backbone's differs (optimizer.backbone_lr_mult != 1)."""
    new = [g["lr"] for g in optimizer.param_groups if not g["name"].startswith("backbone")]
    backbone = [g["lr"] for g in optimizer.param_groups if g["name"].startswith("backbone")]
    values = {"train/lr": new[0]} if new else {}
    if backbone and (not new or backbone[0] != new[0]):
        values["train/lr_backbone"] = backbone[0]
    return values


def memory_in_use(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process, and on a GPU the most memory tensors have held, in MB."""
    values = {}
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
        values["memory/peak_rss_mb"] = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    if device.type == "cuda":
        values["memory/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return values


def drawn_val_images(eval_dir: Path) -> list[Path]:
    """The val images the latest evaluation drew (train.num_val_images_drawn): evaluation.py writes
    them after eval/metrics.json, so older files (of an image a later evaluation could not read)
    are left out."""
    scores = eval_dir / "metrics.json"
    if not scores.is_file():
        return []
    scored_at = scores.stat().st_mtime_ns
    return sorted(path for path in eval_dir.glob("val_*.jpg") if path.stat().st_mtime_ns >= scored_at)


def read_rgb(path: str | Path) -> np.ndarray:
    """A drawn val image (evaluation.py writes them), as H,W,3 uint8 RGB no larger than MAX_IMAGE_SIDE."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    scale = MAX_IMAGE_SIDE / max(bgr.shape[:2])
    if scale < 1:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[:, :, ::-1])
