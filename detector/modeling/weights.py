"""Loading weights into a model that may differ from the one that saved them.

Fine-tuning in one call: tensors whose name and shape match are copied (reused layers keep
what they learned); tensors of another shape, such as a class predictor trained for another
number of classes, are skipped and listed, so those layers keep their fresh random init.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.errors import CheckpointError


@dataclass
class LoadReport:
    """What `load_matching_weights` did, as tensor names: loaded, skipped for a shape mismatch,
    missing from the file (kept their init) and unexpected (in the file only, ignored)."""

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored

    def summary(self) -> str:
        """The report as lines for a log: the count loaded, then each shape mismatch and the
        missing and unexpected names (the first 10 of each)."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        for key, file_shape, model_shape in self.shape_mismatch:
            lines.append(f"  skipped {key}: file {list(file_shape)} vs model {list(model_shape)} (kept its new init)")
        if self.missing:
            lines.append(f"  not in the file, kept their init ({len(self.missing)}): {', '.join(self.missing[:10])}"
                         + (" ..." if len(self.missing) > 10 else ""))
        if self.unexpected:
            lines.append(f"  in the file but not in the model, ignored ({len(self.unexpected)}): "
                         + ", ".join(self.unexpected[:10]) + (" ..." if len(self.unexpected) > 10 else ""))
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The model state dict inside a weights file: a bare state dict, or a checkpoint holding one
    under "model" / "state_dict". Loaded with weights_only=True: a file carrying code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types; all mean "not a safe weights file"
        raise CheckpointError(f"{path}: cannot be read as a weights file (tensors only): {error}") from None
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return data


def load_matching_weights(model: nn.Module, state_dict: dict[str, Tensor]) -> LoadReport:
    """Copy every tensor of `state_dict` whose name and shape match the model's; report the rest."""
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for key, tensor in state_dict.items():
        if key not in own:
            # BatchNorm's step counter has no meaning for frozen BatchNorm: not worth a warning.
            if not key.endswith("num_batches_tracked"):
                report.unexpected.append(key)
        elif tensor.shape != own[key].shape:
            report.shape_mismatch.append((key, tuple(tensor.shape), tuple(own[key].shape)))
        else:
            to_load[key] = tensor
            report.loaded.append(key)
    report.missing = [key for key in own if key not in state_dict and not key.endswith("num_batches_tracked")]
    model.load_state_dict(to_load, strict=False)
    return report
