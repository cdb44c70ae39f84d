"""What every backbone family shares: the `Backbone` wrapper the detector sees, the extraction of
intermediate feature maps, BatchNorm choice and stage freezing.

Module names follow torchvision's `BackboneWithFPN` (`body.*`, `fpn.*`) so that torchvision's
detection weights load into ours unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable, Iterable, Sequence

from torch import Tensor, nn
import torch.nn.functional as F
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

from detector.errors import ConfigError
from detector.modeling.backbones.fpn import FeaturePyramidNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IntermediateLayers(nn.ModuleDict):
    """Runs `model`'s direct children in order and returns the outputs of those named in
    `return_layers` ({child name: output key}). Children after the last returned one are dropped,
    so unused layers (a classifier, a head) hold no parameters here.

    The children keep their names, so parameter names equal torchvision's IntermediateLayerGetter's.
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        children = OrderedDict()
        wanted = dict(return_layers)
        for name, module in model.named_children():
            children[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        if wanted:
            raise ConfigError(f"layers {sorted(wanted)} are not children of {type(model).__name__}")
        super().__init__(children)
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class Backbone(nn.Module):
    """Feature maps of a normalized image batch: `forward(x[B,3,H,W]) -> OrderedDict[str, Tensor]`.

    Attributes the rest of the detector reads:
      out_channels          channels of every returned map
      featmap_names         keys of the returned maps, finest first ("0", "1", ..., "pool")
      strides               stride of each returned map relative to the input
      default_anchor_sizes  one tuple of anchor sizes (pixels) per returned map
      image_mean/image_std  the input normalization (0..1 RGB) the pretrained weights expect
    """

    def __init__(
        self,
        body: IntermediateLayers,
        out_channels: int,
        *,
        fpn: FeaturePyramidNetwork | None,
        strides: Sequence[int],
        default_anchor_sizes: Sequence[tuple[float, ...]],
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels
        names = list(body.return_layers.values()) + (["pool"] if fpn is not None else [])
        if not (len(names) == len(strides) == len(default_anchor_sizes)):
            raise ConfigError(f"maps {names}, strides {strides} and anchor sizes {default_anchor_sizes} disagree")
        self.featmap_names = names
        self.strides = tuple(strides)
        self.default_anchor_sizes = tuple(tuple(sizes) for sizes in default_anchor_sizes)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        if self.fpn is not None:
            features = self.fpn(features)
        return features


class FrozenBatchNorm2d(TorchvisionFrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers, same state-dict keys, same result up to
    float rounding), computed by one fused inference-mode batch_norm call instead of a scale and
    a shift pass over the activations: on the CPU it saves a full pass per norm layer."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def fold_frozen_batch_norm(conv_weight: Tensor, bn: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a bias-free conv followed by `bn`, as one conv: scale = gamma / sqrt(var + eps)
    multiplies the weights of each output channel, beta - mean * scale is the bias."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return conv_weight * scale.view(-1, 1, 1, 1).to(conv_weight.dtype), (bn.bias - bn.running_mean * scale).to(conv_weight.dtype)


def batch_norm_layer(frozen: bool, eps: float = 1e-5, momentum: float = 0.1) -> Callable[[int], nn.Module]:
    """FrozenBatchNorm2d (fixed statistics and affine: right for small detection batches) or a
    trainable BatchNorm2d. `eps` must be the one the pretrained weights were trained with."""
    if frozen:
        return partial(FrozenBatchNorm2d, eps=eps)
    return partial(nn.BatchNorm2d, eps=eps, momentum=momentum)


def freeze(modules: Iterable[nn.Module]) -> None:
    """No gradient for these modules' parameters (their BatchNorm statistics are another matter:
    only FrozenBatchNorm2d keeps those fixed in train mode)."""
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def set_frozen_bn_eps(module: nn.Module, eps: float) -> None:
    """Set eps of every FrozenBatchNorm2d (torchvision's overwrite_eps: its fasterrcnn_resnet50_fpn
    COCO weights were converted from Detectron, which used eps 0)."""
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps


def check_trainable_layers(trainable_layers: int, num_stages: int, family: str) -> None:
    if not 0 <= trainable_layers <= num_stages:
        raise ConfigError(
            f"model.backbone.trainable_layers: {family} has {num_stages} stages, so 0..{num_stages} "
            f"(0 = all frozen, {num_stages} = all trainable), got {trainable_layers}"
        )
