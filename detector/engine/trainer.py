"""The training loop, in the order that matters:

    for each iteration:   losses = model(images, targets)
                          (loss / accumulate).backward()
                          every `accumulate` iterations:
                              clip gradients -> optimizer.step() -> optimizer.zero_grad()
                              -> scheduler.step()

It prints the accounting first (N images, batch B -> iterations per epoch = ceil(N / B), or
floor(N / B) with drop_last; total iterations), stops on a non-finite loss with the iteration,
the losses and the images at fault (saving nothing), or rolls back to `last.pt` with a lower
learning rate (`non_finite: rollback`, at most `max_rollbacks` times). Everything around the
optimisation (evaluation, `last.pt` / `best.pt`, results.csv and plots, early stopping) is a
hook (hooks.py) called after each iteration and epoch.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import detector
from detector.config import Config, config_to_dict, save_config
from detector.config_checks import check_data_paths
from detector.data import build_loader, load_dataset
from detector.engine.allocator import keep_freed_memory
from detector.engine.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from detector.engine.early_stopping import EarlyStoppingHook
from detector.engine.evaluation import evaluate_model
from detector.engine.hooks import LOSS_KEYS, CheckpointHook, EvaluationHook, Hook, LogHook, PreviewsHook
from detector.engine.logger import RunLogger
from detector.engine import distributed
from detector.engine.optim import build_optimizer, build_scheduler, scaled_learning_rate
from detector.errors import ConfigError, DetectorError
from detector.modeling.compilation import compile_model
from detector.modeling.faster_rcnn import build_model

class NonFiniteLossError(DetectorError):
    """A loss became NaN or infinite; the message names the iteration, the losses and the images."""


@dataclass
class Accounting:
    num_images: int
    batch_size: int  # per process
    drop_last: bool
    epochs: int
    max_iters: int | None
    world_size: int = 1  # processes; each sees ceil(N / world_size) images per epoch (the sampler pads)

    @property
    def images_per_process(self) -> int:
        return math.ceil(self.num_images / self.world_size)

    @property
    def iters_per_epoch(self) -> int:
        whole, rest = divmod(self.images_per_process, self.batch_size)
        return whole if self.drop_last or rest == 0 else whole + 1

    @property
    def total_iters(self) -> int:
        planned = self.iters_per_epoch * self.epochs
        return min(planned, self.max_iters) if self.max_iters else planned

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_iters / self.iters_per_epoch)

    def describe(self) -> str:
        n, b = self.images_per_process, self.batch_size
        rule = f"floor({n} / {b})" if self.drop_last else f"ceil({n} / {b})"
        if self.world_size == 1:
            text = f"{self.num_images} training images, batch {b}"
        else:
            text = (f"{self.num_images} training images over {self.world_size} processes -> ceil({self.num_images} / "
                    f"{self.world_size}) = {n} per process; batch {b} per process, global batch {b * self.world_size}")
        text += (f" -> {self.iters_per_epoch} iterations per epoch ({rule}{', drop_last' if self.drop_last else ''}); "
                 f"{self.total_epochs} epochs -> {self.total_iters} iterations")
        if self.max_iters and self.max_iters < self.iters_per_epoch * self.epochs:
            text += f" (capped by train.max_iters={self.max_iters})"
        return text


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def default_hooks(config: Config) -> list[Hook]:
    """The hooks a run gets from its config, in the order they run after each epoch."""
    hooks: list[Hook] = [PreviewsHook()] if config.train.previews else []
    hooks += [EvaluationHook(), CheckpointHook(), LogHook()]
    if config.train.patience is not None:
        hooks.append(EarlyStoppingHook(config.train.patience))
    return hooks


class Trainer:
    """Trains a Faster R-CNN from a `Config`: loads the data, builds the model, the optimizer
    and the schedule, and runs `fit()`, which writes the run folder (`config.output`).

    `resume`: True continues from `<output>/weights/last.pt`, a path from that checkpoint.
    `hooks`: extra `Hook`s, called after the config's own (evaluation, checkpoints, logging,
    early stopping).
    """

    def __init__(self, config: Config, resume: str | Path | bool | None = None, hooks: list[Hook] | None = None):
        self.config = config
        train = config.train
        if config.data.train is None:
            raise ConfigError("data.train: no training data configured")
        if train.patience is not None and config.data.val is None:
            raise ConfigError("train.patience: early stopping watches val AP, so it needs data.val")
        check_data_paths(config.data)
        self.device = distributed.init_distributed(train.device)  # one process of torchrun, or the only one
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        seed_everything(train.seed + self.rank, train.deterministic)  # DDP copies rank 0's initial weights
        self.run_dir = Path(config.output)
        self.weights_dir = self.run_dir / "weights"
        if distributed.is_main():  # only rank 0 writes the run folder
            self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLogger(self.run_dir, tensorboard=train.tensorboard, enabled=distributed.is_main())

        self.train_set = load_dataset(config.data.train, augment=config.data.augment, policy=config.data.policy, seed=train.seed)
        self.category_map = self.train_set.category_map
        self.val_set = (
            load_dataset(config.data.val, self.category_map, policy=config.data.policy) if config.data.val else None
        )
        self.log.info(f"train data: {self.train_set.summary()}")
        if self.val_set is not None:
            self.log.info(f"val data: {self.val_set.summary()}")
        if config.data.cache == "ram":
            for name, dataset in (("train", self.train_set), ("val", self.val_set)):
                if dataset is not None:
                    self.log.info(f"data.cache: ram: {name} images decoded once, "
                                  f"{dataset.cache_images() / 2**20:.0f} MB held in memory")

        # The number of classes comes from the data, never from a guess.
        config.model.num_classes = len(self.category_map)
        if train.keep_freed_memory and self.device.type == "cpu" and not keep_freed_memory():
            self.log.info("train.keep_freed_memory: needs Linux with glibc; the allocator is left as it is")
        memory_format = torch.channels_last if train.channels_last else torch.preserve_format
        self.model = build_model(config).to(self.device, memory_format=memory_format)
        if train.compile:
            compile_model(self.model)
        if train.sync_bn and self.world_size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # trainable BatchNorm2d only
        # The model that trains: DistributedDataParallel averages the gradients over processes.
        self.train_model = distributed.wrap_model(self.model, self.device)
        shard = distributed.shard_sampler(len(self.train_set), train.seed)  # None with one process
        self.loader = build_loader(
            self.train_set, train.batch_size, train=True, workers=config.data.workers,
            seed=train.seed + 100_003 * self.rank,  # each process its own augmentation stream
            group_aspect_ratio=config.data.group_aspect_ratio, drop_last=train.drop_last, sampler=shard,
        )
        self.accounting = Accounting(len(self.train_set), train.batch_size, train.drop_last, train.epochs,
                                     train.max_iters, self.world_size)
        if self.accounting.iters_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={train.batch_size} with drop_last leaves no batch from "
                f"{self.accounting.images_per_process} images per process"
            )
        images_per_step = self.world_size * train.batch_size * train.accumulate
        self.lr, self.lr_rule = scaled_learning_rate(train.optimizer, images_per_step)
        self.optimizer = build_optimizer(self.model, train.optimizer, config.model.backbone.pretrained, lr=self.lr)
        steps_per_epoch = math.ceil(self.accounting.iters_per_epoch / train.accumulate)
        self.scheduler = build_scheduler(
            self.optimizer, train.scheduler, math.ceil(self.accounting.total_iters / train.accumulate), steps_per_epoch
        )
        self.amp = train.amp and self.device.type == "cuda"
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
        }

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.batches_done_in_epoch = state["batches_done_in_epoch"]
        self.best_ap = state["best_ap"]
        self.best_epoch = state.get("best_epoch")
        self.rollbacks = state.get("rollbacks", 0)
        restore_rng_states(state["rng"])
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, iteration {self.iteration}, "
                      f"{self.batches_done_in_epoch} batches of this epoch done")

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        train = self.config.train
        if self.world_size > 1:
            self.log.info(f"distributed: {self.world_size} processes ({distributed.backend()}), batch "
                          f"{train.batch_size} per process, global batch {self.world_size * train.batch_size}")
        self.log.info(self.accounting.describe())
        self.log.info(f"learning rate {self.lr:g}: {self.lr_rule}")
        self.log.info(f"optimizer {train.optimizer.name}: " + ", ".join(
            f"{g['name']} lr {g['initial_lr']:g} wd {g['weight_decay']:g} ({sum(p.numel() for p in g['params']):,} params)"
            for g in self.optimizer.param_groups))
        self.log.info(f"device {self.device}{' + AMP' if self.amp else ''}; run folder {self.run_dir}")
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
        train = self.config.train
        self.model.train()
        self.loader.set_epoch(self.epoch)
        start_batch = self.batches_done_in_epoch
        remaining = min(self.accounting.iters_per_epoch - start_batch, self.accounting.total_iters - self.iteration)
        sums = {key: 0.0 for key in LOSS_KEYS}
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
            if self.world_size > 1 and not distributed.all_true(bool(images), self.device):
                # Every process must run the forward pass, or the others wait for its gradients.
                raise DetectorError(f"iteration {self.iteration + 1}: a process got a batch with no readable image; "
                                    f"this one skipped: {[str(s) for s in self.loader.skipped] or 'none'}")
            if images:
                images = [image.to(self.device, non_blocking=True) for image in images]
                targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with torch.autocast(self.device.type, enabled=self.amp):
                    losses = self.train_model(images, targets)
                loss = sum(losses.values())
                # Every process must take the same branch: one NaN anywhere stops (or rolls back) all.
                if not distributed.all_true(bool(torch.isfinite(loss)), self.device):
                    raise NonFiniteLossError(self.describe_bad_batch(losses, targets))
                (self.scaler.scale(loss) / train.accumulate).backward()
                images_seen += len(images)
            else:  # every image of the batch failed to decode: an iteration without a loss
                losses = None

            step_now = (self.iteration + 1) % train.accumulate == 0 or count + 1 == remaining
            if step_now:
                self.optimizer_step()

            self.iteration += 1
            self.batches_done_in_epoch = start_batch + count + 1
            count += 1
            progress.update(1)
            if losses is not None:
                losses_counted += 1
                for key in LOSS_KEYS:
                    sums[key] += losses[key].item()
                progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.base_lr():.2e}")
            for hook in self.hooks:
                hook.after_step(self, losses)
        progress.close()
        means = {key: value / max(losses_counted, 1) for key, value in sums.items()}
        means = distributed.mean_over_processes(means, self.device)  # the losses of the global batch
        means["loss"] = sum(means.values())
        means["time"] = time.time() - epoch_start
        means["images_per_s"] = distributed.sum_over_processes(images_seen, self.device) / max(means["time"], 1e-9)
        return means

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

    def optimizer_step(self) -> None:
        """clip -> step -> zero_grad -> scheduler.step, in that order."""
        has_grads = any(p.grad is not None for g in self.optimizer.param_groups for p in g["params"])
        if has_grads:  # none when every batch since the last step was unreadable
            if self.config.train.clip_grad_norm:  # on the averaged gradients under DDP
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule follows iterations, even one without a loss

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

    def base_lr(self) -> float:
        """The current learning rate of the new layers (the backbone's is this x backbone_lr_mult)."""
        return next(g["lr"] for g in self.optimizer.param_groups if not g["name"].startswith("backbone"))

    def describe_bad_batch(self, losses: dict, targets: list[dict]) -> str:
        records = self.train_set.records
        images = [f"{records[int(t['image_id'])].path} (id {records[int(t['image_id'])].image_id})" for t in targets]
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        return (f"non-finite loss at iteration {self.iteration + 1} (epoch {self.epoch + 1}): {values}; "
                f"images: {'; '.join(images)}. Nothing was saved from this step; last.pt holds the last saved state. "
                "Try a lower train.optimizer.lr, a longer warm-up, train.clip_grad_norm or train.non_finite=rollback.")

    def evaluate(self) -> dict:
        out_dir = self.run_dir / "eval"
        metrics = evaluate_model(
            self.model, self.val_set, self.device, out_dir, batch_size=self.config.train.batch_size,
            workers=self.config.data.workers, draw=self.config.train.num_val_images_drawn,
        )
        metrics["epoch"] = self.epoch
        for sample in metrics["skipped_images"]:
            self.log.warning(f"validation: {sample}; left out of the metrics")
        self.log.info(f"epoch {self.epoch}: AP {_fmt(metrics['AP'])}  AP50 {_fmt(metrics['AP50'])}  AP75 {_fmt(metrics['AP75'])}")
        return metrics

    def save(self, state: dict, name: str) -> None:
        """A checkpoint in weights/, written by rank 0 only."""
        if distributed.is_main():
            save_checkpoint(state, self.weights_dir / name)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
