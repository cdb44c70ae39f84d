"""Optimizers, parameter groups and learning-rate schedules.

Parameter groups follow fine-tuning practice: the pretrained backbone layers (reused) learn at
`lr * backbone_lr_mult`, the new layers (FPN, RPN, ROI heads: randomly initialised) at `lr`;
norm layers and biases get no weight decay. The schedule is one LambdaLR stepped after every
optimizer step: linear warm-up, then step / multistep / cosine decay, whose decay points move
either at every iteration or only at epoch boundaries (`per: epoch`, StepLR-style).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from detector import choices
from detector.choices import spell
from detector.config import OptimizerConfig, SchedulerConfig
from detector.errors import ConfigError

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def parameter_groups(model: nn.Module, cfg: OptimizerConfig, backbone_pretrained: bool) -> list[dict]:
    """Up to four groups: (reused | new) x (decay | no decay). Frozen parameters are left out."""
    no_decay_ids = set()
    if cfg.no_decay_norm_and_bias:
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, NORM_LAYERS) or name == "bias":
                    no_decay_ids.add(id(param))
    reused_ids = set()
    body = getattr(getattr(model, "backbone", None), "body", None)
    if backbone_pretrained and body is not None:
        reused_ids = {id(p) for p in body.parameters()}

    groups: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in reused_ids, id(param) in no_decay_ids), []).append(param)
    result = []
    for (reused, no_decay), params in sorted(groups.items()):
        result.append({
            "params": params,
            "name": f"{'backbone' if reused else 'new'}{'/no_decay' if no_decay else ''}",
            "lr": cfg.lr * (cfg.backbone_lr_mult if reused else 1.0),
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
        })
    return result


def scaled_learning_rate(cfg: OptimizerConfig, images_per_step: int) -> tuple[float, str]:
    """The linear scaling rule (Goyal et al. 2017): `cfg.lr` is tuned for `lr_reference_batch`
    images per optimizer step; with `images_per_step` (processes x batch x accumulate) the
    learning rate is scaled in proportion. Returns (lr, a sentence saying how it was chosen)."""
    if cfg.lr_reference_batch is None:
        return cfg.lr, "train.optimizer.lr as given (lr_reference_batch: null, no scaling)"
    lr = cfg.lr * images_per_step / cfg.lr_reference_batch
    return lr, (f"train.optimizer.lr {cfg.lr:g} per {cfg.lr_reference_batch} images x {images_per_step} images per "
                f"step / {cfg.lr_reference_batch} (linear scaling rule; lr_reference_batch: null turns it off)")


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, backbone_pretrained: bool = True,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """`lr`: the learning rate to use (default `cfg.lr`; the trainer passes the scaled one)."""
    if lr is not None:
        cfg = dataclasses.replace(cfg, lr=lr)
    groups = parameter_groups(model, cfg, backbone_pretrained)
    if cfg.name not in OPTIMIZER_BUILDERS:
        raise ConfigError(f"train.optimizer.name: unknown optimizer {cfg.name!r}; choose {spell(choices.OPTIMIZERS)}")
    return OPTIMIZER_BUILDERS[cfg.name](groups, cfg)


# One builder per name in choices.OPTIMIZERS (a test checks they agree).
OPTIMIZER_BUILDERS: dict[str, Callable[[list[dict], OptimizerConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov),
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas),
    "rmsprop": lambda groups, cfg: torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum),
}


def lr_factor(iteration: int, total_iters: int, iters_per_epoch: int, cfg: SchedulerConfig) -> float:
    """Multiplier of the base learning rate for the optimizer step number `iteration` (0-based)."""
    warmup = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warmup = cfg.warmup_factor * (1 - alpha) + alpha
    if cfg.per == "epoch":
        total_epochs = max(math.ceil(total_iters / iters_per_epoch), 1)
        progress = (iteration // iters_per_epoch) / total_epochs
    elif cfg.per == "iter":
        progress = iteration / max(total_iters, 1)
    else:
        raise ConfigError(f"train.scheduler.per: {cfg.per!r}; choose {spell(choices.SCHEDULE_STEPS)}")

    name = cfg.name
    if name == "constant":
        decay = 1.0
    elif name == "multistep":
        decay = cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    elif name == "step":
        decay = cfg.gamma ** math.floor(progress / cfg.step_size + 1e-9)
    elif name == "cosine":
        decay = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise ConfigError(f"train.scheduler.name: unknown schedule {cfg.name!r}; choose {spell(choices.SCHEDULES)}")
    return warmup * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_iters: int, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call `scheduler.step()` once after every `optimizer.step()`."""
    lr_factor(0, total_iters, iters_per_epoch, cfg)  # fail now on a bad name, not mid-run
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_iters, iters_per_epoch, cfg)
    )
