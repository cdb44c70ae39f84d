"""Checkpoints: written atomically, read without running code.

A checkpoint holds everything a run needs to continue or to predict: model, optimizer,
scheduler and AMP scaler states, the position (epoch, iteration, batches done in the epoch),
RNG states, the resolved config, the class mapping (dataset ids and names), metrics and the
package version. Saving writes a temporary file beside the target, flushes it to disk, then
renames it over the target: a crash at any moment leaves the previous file whole.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from detector.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    write_atomically(path, lambda file: torch.save(state, file))


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` on a temporary file beside it, flushed to disk, then
    renamed over it: at every moment `path` is the previous file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`; tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's reasons run over several lines: keep the gist on one
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (tensors and plain data only): "
                              f"{one_line(str(error))}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a detector checkpoint (no 'model' entry)")
    return state


def one_line(message: str) -> str:
    """The first sentence of a multi-line error, plus torch's unpickler reason when it has one."""
    text = " ".join(message.split())
    first, _, rest = text.partition("WeightsUnpickler error:")
    first = first.split(". ")[0].rstrip(".")
    reason = re.split(r"\. | Check the documentation", rest)[0].strip().rstrip(".")
    return f"{first} ({reason})" if reason else first


def rng_states() -> dict[str, Any]:
    """Every random generator a run draws from, in a form torch.load(weights_only=True) accepts."""
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
