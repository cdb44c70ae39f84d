"""An exponential moving average of the weights (`train.ema`), as Ultralytics' ModelEMA keeps it.

After every optimizer step, every floating-point entry of the model's state dict (parameters and
BatchNorm statistics) moves towards the model's:

    ema = d * ema + (1 - d) * weights,   d = decay * (1 - exp(-updates / tau))

so early on, while the weights still change fast, d is small and the average follows them;
after a few tau it settles at `decay`. Integer entries (counters) are copied. The average is of
the unwrapped model, updated on every DDP process after the same step, so it is the same on all.

A checkpoint of a run with EMA holds both sets: "model" is the average (what evaluation, best.pt,
predict and export use) and "train_model" the optimizer's weights, which `--resume` continues
from, together with "ema_updates", the counter d depends on: resuming without it would restart
the ramp and the resumed average would differ from an uninterrupted run's.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """The moving average of `model`'s weights; `module` is a frozen copy in eval mode."""

    def __init__(self, model: nn.Module, decay: float, tau: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0  # optimizer steps averaged so far

    def current_decay(self) -> float:
        """d for the update that was just counted (updates >= 1)."""
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold `model`'s weights into the average; call once after each optimizer step."""
        self.updates += 1
        d = self.current_decay()
        weights = model.state_dict()
        for name, average in self.module.state_dict().items():
            if average.dtype.is_floating_point:
                average.mul_(d).add_(weights[name].detach(), alpha=1.0 - d)
            else:
                average.copy_(weights[name])

    def checkpoint_entries(self, model: nn.Module) -> dict:
        """The entries a checkpoint gets (they replace the plain run's "model")."""
        return {"model": self.module.state_dict(), "train_model": model.state_dict(), "ema_updates": self.updates}

    def restore(self, state: dict, model: nn.Module) -> bool:
        """Load the average and its counter from a checkpoint; False when it has none (a run
        without EMA): the average then starts again from `model`'s weights."""
        if "ema_updates" not in state:
            self.module.load_state_dict(model.state_dict())
            self.updates = 0
            return False
        self.module.load_state_dict(state["model"])
        self.updates = int(state["ema_updates"])
        return True

    def describe(self) -> str:
        return (f"EMA of the weights: decay {self.decay:g}, ramp tau {self.tau:g} optimizer steps "
                f"(d = decay x (1 - exp(-updates / tau))); evaluation and best.pt use the average")


def training_weights(state: dict) -> dict:
    """The weights a resumed run continues from: "train_model" when the run kept an EMA."""
    return state.get("train_model", state["model"])
