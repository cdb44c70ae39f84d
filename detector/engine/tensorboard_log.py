"""TensorBoard event files in the run folder (`<output>/tensorboard`), written through
`torch.utils.tensorboard` (which needs the `tensorboard` package: the extra `tensorboard`).

`train.tensorboard`: true (the package must be installed), false, or null: on when it is installed.

Resuming continues the same curves. A run killed after its last checkpoint has written events
past the step it will resume from; the writer of the resumed run opens with `purge_step` = the
first step it will write, which records a restart marker in the new event file, and TensorBoard's
reader drops every earlier event at or after that step. So each step shows once, with the value
of the attempt that reached the checkpoint. The same marker serves a rollback to last.pt
(`train.non_finite: rollback`): `restart_at` opens a new event file from the step run again.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from detector.dependencies import require

TENSORBOARD_FOLDER = "tensorboard"  # under the run folder


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wants_tensorboard(setting: bool | None) -> bool:
    """Whether a run writes TensorBoard events: `train.tensorboard` true (a MissingDependencyError
    naming the extra when the package is missing), false, or null (on when it is installed)."""
    if setting is None:
        return tensorboard_installed()
    if setting:
        require("tensorboard", "tensorboard", "train.tensorboard: true")
    return setting


class TensorBoardWriter:
    """Scalars and images at a global step, into `log_dir`; events of earlier attempts at
    `first_step` and later are dropped by TensorBoard (module docstring)."""

    def __init__(self, log_dir: str | Path, first_step: int):
        self.log_dir = Path(log_dir)
        self.writer = self._open(first_step)

    def _open(self, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.log_dir), purge_step=first_step)

    def restart_at(self, step: int) -> None:
        """Steps from `step` on are run again (a rollback): a new event file whose restart
        marker hides what the abandoned steps wrote."""
        self.writer.close()
        self.writer = self._open(step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # Waits for the writer's thread to put them in the file, before this step's checkpoint is
        # written: a kill -9 after that checkpoint loses no step.
        self.writer.flush()

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        """`images`: {tag: H,W,3 uint8 RGB}."""
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self, run_dir: Path) -> None:
        self.writer.close()
