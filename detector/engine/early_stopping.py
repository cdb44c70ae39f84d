"""Early stopping: end the run when val AP has not improved for `train.patience` epochs.

The epochs are counted from the best epoch, and only evaluated epochs can show an improvement,
so with `eval_every: 5` and `patience: 10` the run stops at the second evaluation in a row that
does not beat the best. `best.pt` keeps the best epoch; `last.pt` the epoch the run stopped at.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from detector.engine.hooks import Hook

if TYPE_CHECKING:
    from detector.engine.trainer import Trainer


class EarlyStoppingHook(Hook):
    """Place it after the EvaluationHook, which sets `best_ap` / `best_epoch`."""

    def __init__(self, patience: int):
        self.patience = patience

    def after_epoch(self, trainer: Trainer, epoch_losses: dict[str, float]) -> None:
        if not trainer.epoch_metrics or trainer.best_epoch is None:
            return
        waited = trainer.epoch - trainer.best_epoch
        if waited >= self.patience:
            trainer.stop_reason = (
                f"early stop: val AP has not improved for {waited} epochs (train.patience={self.patience}); "
                f"best AP {trainer.best_ap:.4f} at epoch {trainer.best_epoch}, kept in best.pt"
            )
