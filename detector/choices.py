"""Every set of named choices a config can make, defined once.

The config checks (`config_checks.py`) and the builders (optimizers, schedules, backbones, heads,
NMS, data readers) both read these tuples, so a choice is added in one place and can never be
accepted by one and refused by the other. No torch import here: config loading stays light.
"""
from __future__ import annotations

BACKBONES = ("efficientnet_lite0", "resnet50", "mobilenet_v3_large", "mobilenet_v2")
ROI_HEADS = ("two_fc", "conv")
SOFT_NMS_METHODS = ("gaussian", "linear")
NMS_METHODS = ("hard", *SOFT_NMS_METHODS)
BOX_LOSSES = ("smooth_l1", "giou")  # model.roi_heads.box_loss (modeling/box_loss.py)
DATA_FORMATS = ("coco", "voc", "yolo", "synthetic")
DATA_POLICIES = ("skip", "strict")
DATA_CACHES = ("ram",)
TRAIN_SAMPLERS = ("random", "repeat_factor")  # data.sampler: each image once per epoch | rare classes repeated
SYNTHETIC_SCENES = ("shapes", "large")  # data/synthetic.py: the demo's scenes, and large ones with small objects
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("multistep", "step", "cosine", "constant")
SCHEDULE_STEPS = ("iter", "epoch")
NON_FINITE_POLICIES = ("stop", "rollback")
# How an exported .onnx runs (detector/inference/exported.py; --backend, --precision), and at
# which precision OpenVINO computes: f32 unless asked (ONNX Runtime runs f32 only).
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")

# The smallest side of a tile (inference.slice.size) or a training crop (data.tiles.size): two cells
# of the coarsest feature map (stride 32), so a tile never reaches the model as a degenerate image.
MIN_TILE_SIZE = 64


def spell(choices: tuple[str, ...]) -> str:
    """'a, b or c': a set of choices as an error message lists them."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
