"""detector: a Faster R-CNN you can train on your own data, trust and read."""
from detector.config import Config, load_config
from detector.errors import CheckpointError, ConfigError, DetectorError, TargetError
from detector.modeling.faster_rcnn import FasterRCNN, build_model
from detector.modeling.torchvision_compat import from_torchvision, torchvision_config
from detector.modeling.weights import load_matching_weights, read_state_dict

__version__ = "0.1.0"

# Imported on first use: the trainer pulls in the data pipeline (albumentations, pycocotools),
# which `import detector` in a worker or a checkpoint tool should not pay for.
_LAZY = {"Trainer": "detector.engine.trainer", "Predictor": "detector.inference.predictor"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DetectorError",
    "FasterRCNN",
    "Predictor",
    "TargetError",
    "Trainer",
    "build_model",
    "from_torchvision",
    "load_config",
    "load_matching_weights",
    "read_state_dict",
    "torchvision_config",
]
