"""Typed configuration: dataclasses with the defaults, YAML files with `_base_` inheritance,
and dotted `key=value` overrides from the command line. Keys and types are checked here, value
ranges in `config_checks.py`.

The defaults here are the default model: EfficientNet-Lite0 (ImageNet), one stride-16 map,
the paper's 9 anchors per location. `configs/_base_/lite0.yaml` spells them out with comments.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.config_checks import check_config
from detector.errors import ConfigError

DELETE_MARKER = "_delete_"  # in a YAML section: replace the inherited section instead of merging into it
MAX_NESTING = 32  # a config nests a few levels (train.optimizer.lr, anchor lists of lists); deeper is not a config
# Keys that are gone: (the value that did nothing, which old saved configs and checkpoints hold and
# is dropped quietly; what to use instead, said when any other value is set).
RETIRED_KEYS = {
    "data.augment.scale": ([1.0, 1.0], "it did nothing: the model resizes every image to model.transform.min_size "
                                       "anyway; use model.transform.train_min_sizes (multi-scale training), "
                                       "e.g. [480, 512, 544, 576, 608]"),
}


@dataclass
class BackboneConfig:
    name: str = "efficientnet_lite0"  # efficientnet_lite0 | resnet50 | mobilenet_v3_large | mobilenet_v2
    fpn: bool = False  # feature pyramid (several maps) instead of one stride-16 map
    pretrained: bool = True  # ImageNet weights; a missing file is an error, never a random init
    weights: str | None = None  # local file with the backbone's ImageNet weights (overrides the default source)
    trainable_layers: int = 3  # stages trainable from the top (0 = all frozen, the family's maximum = all)
    frozen_bn: bool = True  # BatchNorm as fixed affine (FrozenBatchNorm2d) or trainable BatchNorm2d
    fpn_channels: int = 256
    fpn_norm: bool = False  # BatchNorm inside the FPN (torchvision's resnet50_fpn_v2)


@dataclass
class TransformConfig:
    min_size: int = 600  # shorter side after resize (at test time, and in training without train_min_sizes)
    max_size: int = 1000  # cap on the longer side
    # Multi-scale training: each batch's shorter side drawn from this list (max_size still caps);
    # null = min_size. Test time always uses min_size.
    train_min_sizes: list[int] | None = None
    # Input normalization, (x - mean) / std on RGB in 0..1; null = what the backbone's pretrained
    # weights were trained with (ImageNet mean/std for the torchvision families).
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    size_divisible: int = 32  # batch padded to a multiple of this


@dataclass
class AnchorConfig:
    # One list per feature map; every size is combined with every ratio of that map.
    sizes: list[list[float]] = field(default_factory=lambda: [[128.0, 256.0, 512.0]])
    aspect_ratios: list[list[float]] = field(default_factory=lambda: [[0.5, 1.0, 2.0]])


@dataclass
class RPNConfig:
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000  # per feature map
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_box_size: float = 1e-3
    conv_depth: int = 1  # 3x3 convs before the two 1x1 predictors (torchvision's v2 recipe: 2)


@dataclass
class ROIHeadsConfig:
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    pool_size: int = 7
    sampling_ratio: int = 2
    head: str = "two_fc"  # two_fc | conv
    representation_size: int = 1024
    conv_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])  # head: conv
    conv_norm: bool = True  # head: conv
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    nms_method: str = "hard"  # hard | gaussian | linear (the last two: Soft-NMS)
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 0.001
    box_loss: str = "smooth_l1"  # smooth_l1 (on the deltas) | giou (on the decoded boxes): modeling/box_loss.py
    cascade_ious: list[float] = field(default_factory=list)  # Cascade R-CNN refinement stages' IoU thresholds, e.g. [0.6, 0.7]


@dataclass
class ModelConfig:
    num_classes: int = 1  # object classes, background excluded (the model adds it as label 0)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)


@dataclass
class DatasetConfig:
    """One split. coco: images + annotations; voc: root (+ split); yolo: root (+ split, names);
    synthetic: the embedded demo set, drawn into `root` (a cache folder) on first use."""

    format: str = "coco"  # coco | voc | yolo | synthetic
    images: str | None = None  # coco: folder the JSON's file_name values are relative to
    annotations: str | None = None  # coco: instances JSON
    root: str | None = None  # voc / yolo / synthetic: dataset folder
    split: str | None = None  # voc: ImageSets/Main/<split>.txt; yolo: images/<split>; synthetic: train | val
    names: str | None = None  # yolo: file with one class name per line (default: root/classes.txt or data.yaml)
    num_images: int = 200  # synthetic only
    seed: int = 0  # synthetic only
    scene: str = "shapes"  # synthetic only: shapes (320-480 px images, 20-180 px objects) | large (2000x1500, 10-40 px)
    class_weights: list[float] | None = None  # synthetic only: relative frequency of circle, square, triangle, cross; null = equal


@dataclass
class AugmentConfig:
    hflip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.0  # photometric jitter strength (0 = off)
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass
class TilesConfig:
    """Training on crops of large images (data/tiles.py); 0 = whole images."""

    size: int = 0  # crop side in pixels (0 = off); validation stays on whole images, predicted sliced
    overlap: float = 0.2  # fraction of a crop shared with its neighbour
    min_visible: float = 0.5  # a box is kept in a crop when at least this fraction of its area is inside
    negative_ratio: float = 0.1  # crops holding no object kept, per crop holding one (seeded choice per epoch)


@dataclass
class DataConfig:
    train: DatasetConfig | None = None
    val: DatasetConfig | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tiles: TilesConfig = field(default_factory=TilesConfig)
    workers: int = 2  # loader processes (0 = in the main process)
    cache: str | None = None  # ram: decode every image once and keep it in memory (small data sets); null = read each time
    group_aspect_ratio: bool = True  # batch wide with wide, tall with tall: less padding
    sampler: str = "random"  # random (each image once per epoch) | repeat_factor (rare classes repeated: data/repeat_factor.py)
    repeat_threshold: float = 0.1  # repeat_factor: a class in fewer than this fraction of the images is repeated, r = sqrt(t / f)
    policy: str = "skip"  # bad samples: skip (report and go on) | strict (stop before training, listing all)


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adam | adamw | rmsprop
    lr: float = 0.08  # learning rate of the new layers (RPN, ROI heads, FPN) for lr_reference_batch images per step
    lr_reference_batch: int | None = 16  # linear scaling: lr * (processes x batch x accumulate) / this; null = lr as given
    backbone_lr_mult: float = 1.0  # pretrained backbone layers learn at lr * this
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    weight_decay: float = 1e-4
    no_decay_norm_and_bias: bool = True  # no weight decay on norm layers and biases


@dataclass
class SchedulerConfig:
    name: str = "multistep"  # multistep | step | cosine | constant
    milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # multistep: fractions of the run
    step_size: float = 0.33  # step: decay every this fraction of the run
    gamma: float = 0.1  # decay factor (step, multistep)
    min_lr_factor: float = 0.0  # cosine: final lr = lr * this
    warmup_iters: int = 100  # linear warm-up from lr * warmup_factor (always per iteration)
    warmup_factor: float = 0.001
    per: str = "iter"  # iter | epoch: when the schedule steps


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 2
    drop_last: bool = False  # iterations per epoch: ceil(N / B), or floor(N / B) with drop_last
    max_iters: int | None = None  # stop after this many iterations in all (overrides epochs)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    clip_grad_norm: float | None = 10.0  # max gradient L2 norm; null = no clipping
    non_finite: str = "stop"  # a NaN/inf loss: stop (report and exit) | rollback (to last.pt, lower lr)
    max_rollbacks: int = 3  # non_finite: rollback: give up (stop) after this many
    rollback_lr_factor: float = 0.5  # non_finite: rollback: lr *= this at each rollback
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    ema: bool = False  # keep an exponential moving average of the weights; evaluation and best.pt use it (engine/ema.py)
    ema_decay: float = 0.9999  # ema: the average's decay once the ramp is over, in (0, 1)
    ema_tau: float = 2000.0  # ema: ramp d = ema_decay * (1 - exp(-updates / ema_tau)), in optimizer steps
    amp: bool = False  # mixed precision (CUDA only)
    sync_bn: bool = False  # several processes: trainable BatchNorm2d layers share batch statistics (SyncBatchNorm)
    channels_last: bool = True  # NHWC memory layout for the convolutions: faster on CPU (oneDNN) and CUDA
    keep_freed_memory: bool = True  # CPU, Linux/glibc: freed memory stays in the process for the next step (engine/allocator.py)
    compile: bool = False  # torch.compile the backbone and RPN head (slower training on a 2-core CPU: tools/bench_compile.py)
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (slower)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # evaluate on val every N epochs (and after the last)
    patience: int | None = None  # early stop: end the run after this many epochs without a better val AP; null = off
    checkpoint_every_iters: int | None = None  # also save last.pt every N iterations
    log_every: int = 20  # iterations between log lines (train.log, TensorBoard, MLflow)
    tensorboard: bool | None = None  # <output>/tensorboard; null = on when the tensorboard package is installed
    mlflow: str | None = None  # MLflow tracking URI (file:DIR, sqlite:///FILE, http://HOST:PORT); null = off
    mlflow_experiment: str = "detector"  # mlflow: the experiment the run is logged under
    num_val_images_drawn: int = 4  # validation images saved with predicted and true boxes
    previews: bool = True  # at the start: first training batches, labels / anchor-fit plots, data_report.json


@dataclass
class SliceConfig:
    """Sliced prediction of large images (inference/slicing.py); 0 = the whole image at once."""

    size: int = 0  # tile side in pixels (0 = off); edge tiles shift inward, so no thin leftovers
    overlap: float = 0.2  # fraction of a tile shared with its neighbour, in [0, 0.9)
    full_image: bool = False  # also predict the whole image (large objects), merged with the tiles
    match_threshold: float = 0.5  # detections of one class from different tiles merge above this intersection-over-smaller
    batch_size: int = 8  # tiles per forward pass


@dataclass
class TtaConfig:
    """Test-time augmentation (inference/tta.py): on when hflip is true or scales are given."""

    hflip: bool = False  # also predict the mirrored image
    scales: list[int] = field(default_factory=list)  # min_size of each view (max_size scaled alike); [] = the model's own
    match_threshold: float = 0.55  # detections of one class from different views merge above this IoU


@dataclass
class InferenceConfig:
    slice: SliceConfig = field(default_factory=SliceConfig)
    tta: TtaConfig = field(default_factory=TtaConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: str = "runs/train"  # the run folder


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (following `_base_` files), apply `key=value` overrides, check every key
    and type, and return a `Config`. `path=None` gives the defaults."""
    raw = _read_with_bases(Path(path)) if path is not None else {}
    for override in overrides:
        key, value = parse_override(override)
        set_dotted(raw, key, value)
    config = _build(Config, raw, "", str(path or "<defaults>"))
    check_config(config, str(path or "<defaults>"))
    return config


def config_to_dict(config: Any) -> dict:
    """Plain nested dict of a config (tuples as lists), ready for YAML or a checkpoint."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def settings_from_section(cls: type, section: Any, changes: dict[str, Any]) -> Any:
    """`cls` (a settings dataclass) from a config section: the section's dataclass or its dict, as
    a checkpoint saves it. Keys `cls` lacks are dropped, keys the section lacks keep `cls`'s
    defaults (a checkpoint older than the section), and `changes` that are not None win."""
    values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key: value for key, value in values.items() if key in names}
    values.update({key: value for key, value in changes.items() if value is not None})
    return cls(**values)


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train.optimizer.lr": 0.08, ...}: every leaf of a nested dict under its dotted key (an empty dict is a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    config = _build(Config, data, "", source)
    check_config(config, source)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` to `path` as YAML: every key with its value (defaults included, no `_base_`),
    in field order (`config_to_dict`). Returns None."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ files include each other: {' -> '.join(str(p) for p in seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except RecursionError:  # PyYAML reads nested blocks recursively
        raise ConfigError(f"{path}: nested too deeply to read (a config nests at most {MAX_NESTING} levels)") from None
    _check_nesting(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_merge(merged, _read_with_bases(path.parent / base, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict, update: dict) -> None:
    """Merge a file's keys over its bases' keys, section by section. A section replaces the
    inherited one instead when it says so with `_delete_: true` (MMDetection's marker), and a
    dataset block that names its `format` always does: it describes a whole dataset, so the
    keys of a base's dataset of another format (a COCO `annotations` under a VOC block) must
    not leak into it."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and not _replaces_inherited(value):
            _deep_merge(into[key], {k: v for k, v in value.items() if k != DELETE_MARKER})  # false: merge
        else:
            into[key] = _without_delete_markers(value)


def _replaces_inherited(section: dict) -> bool:
    return _delete_marker(section) or "format" in section


def _delete_marker(section: dict) -> bool:
    marker = section.get(DELETE_MARKER, False)
    if not isinstance(marker, bool):
        raise ConfigError(f"{DELETE_MARKER} must be true or false, got {marker!r}")
    return marker


def _without_delete_markers(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    _delete_marker(value)  # checks its value
    return {k: _without_delete_markers(v) for k, v in value.items() if k != DELETE_MARKER}


def parse_override(override: str) -> tuple[str, Any]:
    """("dotted.key", value) of a `key=value` override, the value read as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. model.rpn.nms_thresh=0.6")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    except RecursionError:
        raise ConfigError(f"override {key}: the value is nested too deeply to read "
                          f"(a config nests at most {MAX_NESTING} levels)") from None
    _check_nesting(value, f"override {key}")
    return key.strip(), value


def _check_nesting(data: Any, source: str) -> None:
    """Refuse lists and mappings nested deeper than MAX_NESTING, before anything walks them recursively."""
    level, depth = [data], 0
    while level:
        level = [child for node in level if isinstance(node, (dict, list))
                 for child in (node.values() if isinstance(node, dict) else node)]
        depth += bool(level)
        if depth > MAX_NESTING:
            raise ConfigError(f"{source}: nested more than {MAX_NESTING} levels deep; a config nests a few "
                              "(e.g. train.optimizer.lr, model.anchors.sizes)")


def set_dotted(data: dict, dotted_key: str, value: Any) -> None:
    node = data
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted_key}: {part} is a value, not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = _without_retired_keys(data, prefix, source)
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    values = {}
    for name in names:
        if name in data:
            hint = _optional_dataclass(hints[name]) or hints[name]
            if dataclasses.is_dataclass(hint):
                value = data[name]
                values[name] = None if value is None else _build(hint, value, f"{prefix}{name}.", source)
            else:
                values[name] = _coerce(data[name], hint, f"{prefix}{name}", source)
    return cls(**values)


def _without_retired_keys(data: dict, prefix: str, source: str) -> dict:
    """`data` less the RETIRED_KEYS at their do-nothing value; a ConfigError for any other value."""
    kept = {}
    for key, value in data.items():
        retired = RETIRED_KEYS.get(f"{prefix}{key}")
        if retired is None:
            kept[key] = value
        elif not (isinstance(value, (list, tuple)) and list(value) == retired[0]):
            raise ConfigError(f"{source}: {prefix}{key} was removed, {retired[1]}")
    return kept


def _optional_dataclass(hint: Any) -> type | None:
    """The dataclass X of a hint `X | None`, else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against a type hint (int, float, str, bool, X | None, list[...], tuple[...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: {key} must have {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        return origin(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
