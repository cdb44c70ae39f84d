"""What a `Trainer` is made of, one builder per job, called by `Trainer.__init__` in this order:

    check_training_config -> setup_process (device, rank, seeds) -> setup_run_folder (log)
    -> build_datasets -> setup_allocator -> build_model_for -> build_train_loader
    -> build_accounting -> learning_rate_for + optim.build_optimizer -> build_step_scheduler
    -> default_hooks

The order is part of the behaviour: the seeds are set before anything draws a random number, and
what each later step draws (the model's initial weights among them) depends on what was drawn
before it, so the same config gives the same run. Each builder reads the config and changes
nothing in it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.config import Config, TrainConfig
from detector.config_checks import check_data_paths
from detector.data import build_loader, load_dataset
from detector.data.repeat_factor import (RepeatFactorSampler, class_repeat_factors, describe_repeat_factors,
                                         image_repeat_factors)
from detector.data.tiles import TiledDataset, check_no_shared_images
from detector.engine import distributed
from detector.engine.allocator import keep_freed_memory
from detector.engine.dashboards import DashboardHook, check_dashboards
from detector.engine.early_stopping import EarlyStoppingHook
from detector.engine.hooks import CheckpointHook, EvaluationHook, Hook, LogHook, PreviewsHook
from detector.engine.logger import RunLogger
from detector.engine.optim import build_scheduler, scaled_learning_rate
from detector.errors import ConfigError
from detector.modeling.compilation import compile_model
from detector.modeling.faster_rcnn import build_model


@dataclass
class Accounting:
    num_images: int
    batch_size: int  # per process
    drop_last: bool
    epochs: int
    max_iters: int | None
    world_size: int = 1  # processes; each sees ceil(N / world_size) images per epoch (the sampler pads)
    source_images: int | None = None  # data.tiles: the whole images the num_images crops are cut from
    repeated_from: int | None = None  # data.sampler: repeat_factor: the images (or crops) num_images samples repeat

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
        unit = "images"
        if self.source_images is not None:
            unit = (f"crops (data.tiles: {self.source_images} images x "
                    f"{self.num_images / max(self.source_images, 1):.1f} crops per image)")
        if self.repeated_from is not None:
            unit = (f"samples per epoch (data.sampler: repeat_factor over {self.repeated_from} "
                    f"{'crops' if self.source_images is not None else 'images'})")
        if self.world_size == 1:
            text = f"{self.num_images} training {unit}, batch {b}"
        else:
            text = (f"{self.num_images} training {unit} over {self.world_size} processes -> ceil({self.num_images} / "
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


def check_training_config(config: Config) -> None:
    """Refuse, before anything is built, a config that cannot train."""
    if config.data.train is None:
        raise ConfigError("data.train: no training data configured")
    if config.train.patience is not None and config.data.val is None:
        raise ConfigError("train.patience: early stopping watches val AP, so it needs data.val")
    check_data_paths(config.data)
    check_dashboards(config.train)  # a missing tensorboard / mlflow package


def setup_process(train: TrainConfig) -> tuple[torch.device, int, int]:
    """This process's (device, rank, world size): one process of torchrun, or the only one; seeded."""
    device = distributed.init_distributed(train.device)
    rank, world_size = distributed.rank(), distributed.world_size()
    seed_everything(train.seed + rank, train.deterministic)  # DDP copies rank 0's initial weights
    return device, rank, world_size


def setup_run_folder(config: Config) -> tuple[Path, Path, RunLogger]:
    """(run folder, its weights/ folder, the run's logger); only rank 0 writes the run folder."""
    run_dir = Path(config.output)
    weights_dir = run_dir / "weights"
    if distributed.is_main():
        weights_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, weights_dir, RunLogger(run_dir, enabled=distributed.is_main())


def build_datasets(config: Config, log: RunLogger) -> tuple:
    """(train set, val set or None), summarised in the log; the val set uses the train set's
    class mapping, so that label k means the same class in both."""
    data = config.data
    train_set = load_dataset(data.train, augment=data.augment, policy=data.policy, seed=config.train.seed)
    val_set = load_dataset(data.val, train_set.category_map, policy=data.policy) if data.val else None
    if data.tiles.size:
        if val_set is not None:
            check_no_shared_images(train_set.records, val_set.records)
        # config.train.seed, never a rank's: every DDP process draws the same negative crops.
        train_set = TiledDataset(train_set, data.tiles, seed=config.train.seed)
    log.info(f"train data: {train_set.summary()}")
    if val_set is not None:
        log.info(f"val data: {val_set.summary()}")
    if data.cache == "ram":
        for name, dataset in (("train", train_set), ("val", val_set)):
            if dataset is not None:
                log.info(f"data.cache: ram: {name} images decoded once, "
                         f"{dataset.cache_images() / 2**20:.0f} MB held in memory")
    return train_set, val_set


def setup_allocator(train: TrainConfig, device: torch.device, log: RunLogger) -> None:
    """`train.keep_freed_memory` on the CPU (allocator.py says why)."""
    if train.keep_freed_memory and device.type == "cpu" and not keep_freed_memory():
        log.info("train.keep_freed_memory: needs Linux with glibc; the allocator is left as it is")


def build_model_for(config: Config, device: torch.device, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model, the model that trains): the second is the first wrapped in
    DistributedDataParallel with several processes (it averages the gradients), the same object
    otherwise. `config.model.num_classes` must already be the data's."""
    train = config.train
    memory_format = torch.channels_last if train.channels_last else torch.preserve_format
    model = build_model(config).to(device, memory_format=memory_format)
    if train.compile:
        compile_model(model)
    if train.sync_bn and world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trainable BatchNorm2d only
    return model, distributed.wrap_model(model, device)


def build_train_loader(config: Config, train_set, rank: int, log: RunLogger | None = None):
    """The training loader; with several processes, this process's shard of every epoch.
    `data.sampler: repeat_factor`: images of rare classes repeated (data/repeat_factor.py), the
    factors written to `log`."""
    train = config.train
    if config.data.sampler == "repeat_factor":
        shard = repeat_factor_sampler(config, train_set, log)
    else:
        shard = distributed.shard_sampler(len(train_set), train.seed)  # None with one process
    return build_loader(
        train_set, train.batch_size, train=True, workers=config.data.workers,
        seed=train.seed + 100_003 * rank,  # each process its own augmentation stream
        group_aspect_ratio=config.data.group_aspect_ratio, drop_last=train.drop_last, sampler=shard,
    )


def repeat_factor_sampler(config: Config, train_set, log: RunLogger | None) -> RepeatFactorSampler:
    """The repeat-factor sampler of the training set's boxes (crowd boxes left out), seeded by
    train.seed alone: every process draws the same epoch and takes its share. With data.tiles the
    factors are those of the crops (negatives, drawn anew each epoch, hold no class: r = 1)."""
    labels = [record.labels[~record.iscrowd] for record in train_set.records]
    threshold = config.data.repeat_threshold
    class_factors = class_repeat_factors(labels, threshold)
    image_factors = image_repeat_factors(labels, class_factors)
    if log is not None:
        for line in describe_repeat_factors(class_factors, image_factors, threshold, train_set.category_map.names):
            log.info(line)
    return RepeatFactorSampler(image_factors, seed=config.train.seed, num_replicas=distributed.world_size(),
                               rank=distributed.rank())


def samples_per_epoch(loader) -> int | None:
    """The effective epoch length (all processes) under data.sampler: repeat_factor; None otherwise."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    return sampler.epoch_length if isinstance(sampler, RepeatFactorSampler) else None


def build_accounting(train: TrainConfig, num_images: int, world_size: int,
                     source_images: int | None = None, epoch_samples: int | None = None) -> Accounting:
    """Iterations per epoch and in all; refuses a batch size that leaves no iteration.
    `source_images`: with data.tiles, the images the `num_images` crops are cut from.
    `epoch_samples`: with data.sampler: repeat_factor, the samples of an epoch (repeats included)."""
    accounting = Accounting(epoch_samples or num_images, train.batch_size, train.drop_last, train.epochs,
                            train.max_iters, world_size, source_images, num_images if epoch_samples else None)
    if accounting.iters_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={train.batch_size} with drop_last leaves no batch from "
            f"{accounting.images_per_process} images per process"
        )
    return accounting


def learning_rate_for(train: TrainConfig, world_size: int) -> tuple[float, str]:
    """(lr, how it was chosen): scaled to the images of one optimizer step, all processes together."""
    return scaled_learning_rate(train.optimizer, world_size * train.batch_size * train.accumulate)


def build_step_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                         accounting: Accounting) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule counts optimizer steps: one per `train.accumulate` iterations, an epoch's
    last, partial accumulation included."""
    steps_per_epoch = math.ceil(accounting.iters_per_epoch / train.accumulate)
    return build_scheduler(optimizer, train.scheduler, math.ceil(accounting.total_iters / train.accumulate), steps_per_epoch)


def default_hooks(config: Config) -> list[Hook]:
    """The hooks a run gets from its config, in the order they run after each epoch."""
    hooks: list[Hook] = [PreviewsHook()] if config.train.previews else []
    # The dashboards before CheckpointHook: a step's points are on disk before its checkpoint (dashboards.py).
    hooks += [EvaluationHook(), DashboardHook(), CheckpointHook(), LogHook()]
    if config.train.patience is not None:
        hooks.append(EarlyStoppingHook(config.train.patience))
    return hooks
