"""The training loop: `Trainer.__init__` calls the builders of builders.py in order (data, model,
loader, optimizer, schedule, hooks) on its own copy of the config, and `run_step` is one
iteration, in the order that matters:

    losses = model(images, targets)
    (loss / accumulate).backward()
    every `accumulate` iterations:
        clip gradients -> optimizer.step() -> optimizer.zero_grad() -> EMA update (train.ema)
        -> scheduler.step()

It prints the accounting first (N images, batch B -> iterations per epoch = ceil(N / B), or
floor(N / B) with drop_last; total iterations), stops on a non-finite loss with the iteration,
the losses and the images at fault (saving nothing), or rolls back to `last.pt` with a lower
learning rate (`non_finite: rollback`, at most `max_rollbacks` times). Everything around the
optimisation (evaluation, `last.pt` / `best.pt`, results.csv and plots, TensorBoard / MLflow,
early stopping) is a hook (hooks.py) called after each iteration and epoch.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

import detector
from detector.config import Config, config_to_dict, save_config
from detector.data.tiles import TiledDataset
from detector.engine import distributed
from detector.engine.builders import (build_accounting, build_datasets, build_model_for, build_step_scheduler,
                                      build_train_loader, check_training_config, default_hooks, learning_rate_for,
                                      samples_per_epoch, setup_allocator, setup_process, setup_run_folder)
from detector.engine.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from detector.engine.ema import ModelEMA, training_weights
from detector.engine.evaluation import evaluate_model, validation_model
from detector.engine.evaluator import format_size_table
from detector.engine.hooks import Hook
from detector.engine.optim import build_optimizer
from detector.errors import DetectorError, NonFiniteLossError


class Trainer:
    """Trains a Faster R-CNN from a `Config`: loads the data, builds the model, the optimizer
    and the schedule, and runs `fit()`, which writes the run folder (`config.output`).

    `resume`: True continues from `<output>/weights/last.pt`, a path from that checkpoint.
    `hooks`: extra `Hook`s, called after the config's own (evaluation, checkpoints, logging,
    early stopping).
    The trainer works on a copy of `config` (`self.config`, with `model.num_classes` taken from
    the data); the caller's object is left as it was.
    """

    def __init__(self, config: Config, resume: str | Path | bool | None = None, hooks: list[Hook] | None = None):
        # A copy, so that setting num_classes below (and anything else later) never reaches the
        # caller's object, which may build a second trainer or be saved as the user wrote it.
        self.config = config = copy.deepcopy(config)
        train = config.train
        check_training_config(config)
        self.device, self.rank, self.world_size = setup_process(train)
        self.run_dir, self.weights_dir, self.log = setup_run_folder(config)
        self.train_set, self.val_set = build_datasets(config, self.log)
        self.category_map = self.train_set.category_map
        config.model.num_classes = len(self.category_map)  # from the data, never from a guess
        setup_allocator(train, self.device, self.log)
        self.model, self.train_model = build_model_for(config, self.device, self.world_size)
        self.loss_names = self.model.loss_names()  # the epoch means and results.csv columns
        # The average of the unwrapped model, on every process (engine/ema.py); None with train.ema off.
        self.ema = ModelEMA(self.model, train.ema_decay, train.ema_tau) if train.ema else None
        self.loader = build_train_loader(config, self.train_set, self.rank, self.log)
        self.accounting = build_accounting(train, len(self.train_set), self.world_size,
                                           len(self.train_set.source) if isinstance(self.train_set, TiledDataset) else None,
                                           samples_per_epoch(self.loader))  # data.sampler: repeat_factor
        self.lr, self.lr_rule = learning_rate_for(train, self.world_size)
        self.optimizer = build_optimizer(self.model, train.optimizer, config.model.backbone.pretrained, lr=self.lr)
        self.scheduler = build_step_scheduler(self.optimizer, train, self.accounting)
        self.amp = train.amp and self.device.type == "cuda"  # mixed precision on GPUs only
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.epoch = 0  # epochs completed
        self.iteration = 0  # iterations completed
        self.batches_done_in_epoch = 0
        self.best_ap = -1.0  # so the first evaluation always writes best.pt
        self.best_epoch: int | None = None
        self.epoch_metrics: dict = {}  # this epoch's evaluation ({} when it had none); set by EvaluationHook
        self.latest_metrics: dict = {}  # the latest evaluation
        self.stop_reason: str | None = None  # set by a hook to end the run after this epoch
        self.hooks = default_hooks(config) + list(hooks or [])
        self.skipped_reported = 0  # samples of self.loader.skipped already logged
        self.rollbacks = 0  # non-finite losses rolled back so far (train.non_finite: rollback)
        if resume:  # every process loads the same file
            self.resume(self.weights_dir / "last.pt" if resume is True else Path(resume))
        if distributed.is_main():
            save_config(config, self.run_dir / "config.yaml")

    # ------------------------------------------------------------------ state

    def state(self, metrics: dict | None = None) -> dict:
        """The run as a checkpoint dict, what last.pt and best.pt hold: the weights ("model"; with
        train.ema the average, the trained weights in "train_model"), the optimizer, scheduler and
        AMP scaler states, the counters (epoch, iteration, batches done in the epoch, best AP and
        its epoch, rollbacks), the random-number states, the config, the categories, `metrics`
        ({} when None) and the package version."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "batches_done_in_epoch": self.batches_done_in_epoch,
            "best_ap": self.best_ap,
            "best_epoch": self.best_epoch,
            "rollbacks": self.rollbacks,
            "rng": rng_states(),
            "config": config_to_dict(self.config),
            "categories": self.category_map.to_dict(),
            "metrics": metrics or {},
            "version": detector.__version__,
            **(self.ema.checkpoint_entries(self.model) if self.ema else {}),  # "model" is then the average
        }

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at `path` (a `state()` dict): loads the weights the run was
        training (not the EMA average), the optimizer, scheduler and scaler states, the counters,
        the random-number states and the EMA, so `fit()` goes on from the iteration it holds.
        Returns None; a missing or unreadable file raises CheckpointError."""
        state = load_checkpoint(path)
        self.model.load_state_dict(training_weights(state))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.batches_done_in_epoch = state["batches_done_in_epoch"]
        self.best_ap = state["best_ap"]
        self.best_epoch = state.get("best_epoch")
        self.rollbacks = state.get("rollbacks", 0)
        restore_rng_states(state["rng"])
        if self.ema and not self.ema.restore(state, self.model):
            self.log.warning(f"{path} holds no EMA (train.ema was off): the average starts again from its weights")
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, iteration {self.iteration}, "
                      f"{self.batches_done_in_epoch} batches of this epoch done")

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train until the planned iterations are done (train.epochs, capped by train.max_iters) or
        a hook sets `stop_reason` (early stopping), running the hooks around every step and epoch
        (evaluation, last.pt / best.pt, logs). Returns the latest evaluation's metrics (as
        `evaluate()` returns them; {} when nothing was evaluated, e.g. without data.val). A
        non-finite loss raises NonFiniteLossError, unless `train.non_finite: rollback` recovers."""
        train = self.config.train
        if self.world_size > 1:
            self.log.info(f"distributed: {self.world_size} processes ({distributed.backend()}), batch "
                          f"{train.batch_size} per process, global batch {self.world_size * train.batch_size}")
        self.log.info(self.accounting.describe())
        self.log.info(f"learning rate {self.lr:g}: {self.lr_rule}")
        if self.ema:
            self.log.info(self.ema.describe())
        self.log.info(f"optimizer {train.optimizer.name}: " + ", ".join(
            f"{g['name']} lr {g['initial_lr']:g} wd {g['weight_decay']:g} ({sum(p.numel() for p in g['params']):,} params)"
            for g in self.optimizer.param_groups))
        self.log.info(f"device {self.device}{' + AMP' if self.amp else ''}; run folder {self.run_dir}")
        if self.val_set is not None:
            validation = validation_model(self.model, self.config)
            if validation is not self.model:
                self.log.info(f"validation: whole images, {validation.settings.describe()} (inference.slice)")
            elif self.config.data.tiles.size:
                self.log.warning(f"validation: whole images, not sliced, while training on {self.config.data.tiles.size} px "
                                 f"crops (data.tiles); set inference.slice.size={self.config.data.tiles.size} to score "
                                 "the val set as the model will predict it")
        for hook in self.hooks:
            hook.before_train(self)
        while self.iteration < self.accounting.total_iters and self.stop_reason is None:
            try:
                epoch_losses = self.train_one_epoch()
            except NonFiniteLossError as error:
                self.roll_back(error)
                continue
            self.epoch += 1
            self.batches_done_in_epoch = 0
            for hook in self.hooks:
                hook.after_epoch(self, epoch_losses)
        for hook in self.hooks:
            hook.after_train(self)
        if self.stop_reason:
            self.log.info(self.stop_reason)
        self.log.info(f"done: {self.iteration} iterations; weights in {self.weights_dir}")
        self.log.close()
        distributed.barrier()  # no process leaves (and may tear down the group) before rank 0 has saved
        return self.latest_metrics

    def train_one_epoch(self) -> dict[str, float]:
        """The epoch's remaining batches through `run_step`, the hooks' `after_step` after each;
        returns the epoch's mean losses (over all processes), time and images/s."""
        self.model.train()
        self.loader.set_epoch(self.epoch)
        start_batch = self.batches_done_in_epoch
        remaining = min(self.accounting.iters_per_epoch - start_batch, self.accounting.total_iters - self.iteration)
        sums = {key: 0.0 for key in self.loss_names}
        count = losses_counted = images_seen = 0
        epoch_start = time.time()
        progress = self.log.progress(remaining, f"epoch {self.epoch + 1}/{self.accounting.total_epochs}")
        for batch_index, (images, targets) in enumerate(self.loader):
            if batch_index < start_batch:
                # Resuming mid-epoch: load (not train on) the batches already done, so the
                # shuffling and augmentation random streams stay those of an uninterrupted run.
                self.skipped_reported = len(self.loader.skipped)  # reported before the interruption
                continue
            if count == remaining:
                break
            self.report_skipped()
            losses = self.run_step(images, targets, last_in_epoch=count + 1 == remaining)
            self.iteration += 1
            self.batches_done_in_epoch = start_batch + count + 1
            count += 1
            progress.update(1)
            if losses is not None:
                images_seen += len(images)
                losses_counted += 1
                for key in self.loss_names:
                    sums[key] += losses[key].item()
                progress.set_postfix(loss=f"{sum(losses.values()).item():.3f}", lr=f"{self.base_lr():.2e}")
            for hook in self.hooks:
                hook.after_step(self, losses)
        progress.close()
        means = {key: value / max(losses_counted, 1) for key, value in sums.items()}
        means = distributed.mean_over_processes(means, self.device)  # the losses of the global batch
        means["loss"] = sum(means.values())
        means["time"] = time.time() - epoch_start
        means["images_per_s"] = distributed.sum_over_processes(images_seen, self.device) / max(means["time"], 1e-9)
        return means

    def run_step(self, images: list[torch.Tensor], targets: list[dict], last_in_epoch: bool) -> dict | None:
        """One iteration: forward -> loss -> non-finite check -> backward, then, every `accumulate`
        iterations and on the epoch's last batch, clip -> optimizer.step -> zero_grad ->
        scheduler.step. Returns the losses; None when no image of the batch could be read."""
        train = self.config.train
        if self.world_size > 1 and not distributed.all_true(bool(images), self.device):
            # Every process must run the forward pass, or the others wait for its gradients.
            raise DetectorError(f"iteration {self.iteration + 1}: a process got a batch with no readable image; "
                                f"this one skipped: {[str(s) for s in self.loader.skipped] or 'none'}")
        losses = None  # stays None when every image of the batch failed to decode
        self.batch_images = len(images)  # for the dashboards' images/s (engine/dashboards.py)
        self.grad_norm = None  # set below when this iteration steps the optimizer (dashboards' train/grad_norm)
        if images:
            images, targets = batch_to_device(images, targets, self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                losses = self.train_model(images, targets)
            loss = sum(losses.values())
            # Every process must take the same branch: one NaN anywhere stops (or rolls back) all.
            if not distributed.all_true(bool(torch.isfinite(loss)), self.device):
                raise NonFiniteLossError(self.describe_bad_batch(losses, targets))
            (self.scaler.scale(loss) / train.accumulate).backward()
        if (self.iteration + 1) % train.accumulate == 0 or last_in_epoch:
            has_grads = any(p.grad is not None for g in self.optimizer.param_groups for p in g["params"])
            if has_grads:  # none when every batch since the last step was unreadable
                self.scaler.unscale_(self.optimizer)  # the true gradients, to clip and to measure (no-op without AMP)
                # Their norm before clipping, of the averaged gradients under DDP; clip_grad_norm null: never clipped.
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                train.clip_grad_norm or float("inf"))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(self.model)
            self.scheduler.step()  # the schedule follows iterations, even one without a loss
        return losses

    def roll_back(self, error: NonFiniteLossError) -> None:
        """`non_finite: rollback`: reload last.pt and go on with the learning rate times
        `rollback_lr_factor`; re-raise when rollback is off or `max_rollbacks` are used up."""
        train = self.config.train
        if train.non_finite != "rollback":
            raise error
        if self.rollbacks >= train.max_rollbacks:
            raise NonFiniteLossError(f"{error} Gave up after {self.rollbacks} rollbacks (train.max_rollbacks).") from None
        done = self.rollbacks + 1
        self.resume(self.weights_dir / "last.pt")  # sets self.rollbacks to the checkpoint's count
        factor = train.rollback_lr_factor ** (done - self.rollbacks)
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
            group["initial_lr"] *= factor
        self.optimizer.zero_grad(set_to_none=True)
        self.rollbacks = done
        self.log.warning(f"{error} Rolled back to last.pt (iteration {self.iteration}) with the learning rate x"
                         f"{train.rollback_lr_factor ** done:g} (rollback {done} of {train.max_rollbacks}).")

    def report_skipped(self) -> None:
        """Log the samples the loader skipped since the last call and list them in the run folder."""
        new = self.loader.skipped[self.skipped_reported:]
        if not new:
            return
        self.skipped_reported = len(self.loader.skipped)
        with open(self.run_dir / "skipped_images.txt", "a") as listing:
            for sample in new:
                self.log.warning(f"iteration {self.iteration + 1}: {sample}")
                listing.write(f"epoch {self.epoch + 1} iteration {self.iteration + 1}: {sample}\n")

    def count_skipped_images(self, metrics: dict) -> int:
        """Images this process left out: unreadable at load time (train and val sets), while
        training (the loader's skipped samples, each once) and at the last evaluation (`metrics`
        of `fit`). `detector train` exits 1 when there are any."""
        at_load = sum(len(dataset.report.skipped_images) for dataset in (self.train_set, self.val_set)
                      if dataset is not None and dataset.report is not None)
        return at_load + len({str(sample) for sample in self.loader.skipped}) + len(metrics.get("skipped_images", []))

    def base_lr(self) -> float:
        """The current learning rate of the new layers (the backbone's is this x backbone_lr_mult)."""
        return next(g["lr"] for g in self.optimizer.param_groups if not g["name"].startswith("backbone"))

    def describe_bad_batch(self, losses: dict, targets: list[dict]) -> str:
        """The message of a non-finite loss: the iteration and epoch, every loss value, the files
        of the batch's images and what to try."""
        records = self.train_set.records
        images = [f"{records[int(t['image_id'])].path} (id {records[int(t['image_id'])].image_id})" for t in targets]
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        return (f"non-finite loss at iteration {self.iteration + 1} (epoch {self.epoch + 1}): {values}; "
                f"images: {'; '.join(images)}. Nothing was saved from this step; last.pt holds the last saved state. "
                "Try a lower train.optimizer.lr, a longer warm-up, train.clip_grad_norm or train.non_finite=rollback.")

    def evaluate(self) -> dict:
        """COCO metrics on the val set now (data.val required), with the EMA average when train.ema
        is on and sliced when inference.slice.size > 0; writes the metrics, predictions, PR curves
        and train.num_val_images_drawn drawn images to <output>/eval and logs AP / AP50 / AP75.
        Returns the metrics dict, with "epoch" (epochs completed) and "skipped_images" added."""
        out_dir = self.run_dir / "eval"
        metrics = evaluate_model(
            validation_model(self.ema.module if self.ema else self.model, self.config),  # train.ema: the average
            self.val_set, self.device, out_dir,
            batch_size=self.config.train.batch_size, workers=self.config.data.workers,
            draw=self.config.train.num_val_images_drawn,
        )
        metrics["epoch"] = self.epoch
        for sample in metrics["skipped_images"]:
            self.log.warning(f"validation: {sample}; left out of the metrics")
        self.log.info(f"epoch {self.epoch}: AP {_fmt(metrics['AP'])}  AP50 {_fmt(metrics['AP50'])}  AP75 {_fmt(metrics['AP75'])}")
        for line in format_size_table(metrics):
            self.log.info(f"  {line}")
        return metrics

    def save(self, state: dict, name: str) -> None:
        """A checkpoint in weights/, written by rank 0 only."""
        if distributed.is_main():
            save_checkpoint(state, self.weights_dir / name)


def batch_to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
