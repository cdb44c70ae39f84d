"""Value checks for a typed config: ranges and choices, named by their dotted key.

`config.py` already checked every key and type; these rules catch what types cannot (a negative
learning rate, an IoU threshold of 7, background above foreground) before a model is built,
so a bad value fails in a second with its key instead of as NaN an hour into training.
"""
from __future__ import annotations

from typing import Any, Callable

from detector import choices
from detector.choices import MIN_TILE_SIZE, spell
from detector.errors import ConfigError, DataError


def _positive(v: Any) -> bool:
    return v > 0


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _unit(v: Any) -> bool:
    return 0.0 <= v <= 1.0


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


# (dotted key, rule, what the rule asks for). Keys under data.train / data.val are checked
# only for the splits that are set.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.num_classes", _at_least(1), "an integer >= 1"),
    ("model.backbone.name", _one_of(*choices.BACKBONES), spell(choices.BACKBONES)),
    ("model.backbone.trainable_layers", _at_least(0), ">= 0"),
    ("model.backbone.fpn_channels", _at_least(1), ">= 1"),
    ("model.transform.min_size", _at_least(1), ">= 1 (pixels)"),
    ("model.transform.max_size", _at_least(1), ">= 1 (pixels)"),
    ("model.transform.train_min_sizes", _optional(lambda v: len(v) > 0 and all(x >= 1 for x in v)),
     "a non-empty list of sizes >= 1 (pixels), or null"),
    ("model.transform.size_divisible", _at_least(1), ">= 1"),
    ("model.transform.image_std", _optional(lambda v: all(s > 0 for s in v)), "three values > 0 (or null)"),
    ("model.anchors.sizes", lambda v: len(v) > 0 and all(len(s) > 0 and all(x > 0 for x in s) for s in v),
     "one non-empty list of sizes > 0 per feature map"),
    ("model.anchors.aspect_ratios", lambda v: len(v) > 0 and all(len(r) > 0 and all(x > 0 for x in r) for r in v),
     "one non-empty list of ratios > 0 per feature map"),
    ("model.rpn.fg_iou_thresh", _unit, "an IoU in 0..1"),
    ("model.rpn.bg_iou_thresh", _unit, "an IoU in 0..1"),
    ("model.rpn.batch_size_per_image", _at_least(1), ">= 1"),
    ("model.rpn.positive_fraction", _unit, "a fraction in 0..1"),
    ("model.rpn.pre_nms_top_n_train", _at_least(1), ">= 1"),
    ("model.rpn.pre_nms_top_n_test", _at_least(1), ">= 1"),
    ("model.rpn.post_nms_top_n_train", _at_least(1), ">= 1"),
    ("model.rpn.post_nms_top_n_test", _at_least(1), ">= 1"),
    ("model.rpn.nms_thresh", _unit, "an IoU in 0..1"),
    ("model.rpn.score_thresh", _unit, "a probability in 0..1"),
    ("model.rpn.min_box_size", _at_least(0), ">= 0 (pixels)"),
    ("model.rpn.conv_depth", _at_least(1), ">= 1"),
    ("model.roi_heads.fg_iou_thresh", _unit, "an IoU in 0..1"),
    ("model.roi_heads.bg_iou_thresh", _unit, "an IoU in 0..1"),
    ("model.roi_heads.batch_size_per_image", _at_least(1), ">= 1"),
    ("model.roi_heads.positive_fraction", _unit, "a fraction in 0..1"),
    ("model.roi_heads.box_reg_weights", lambda v: all(w > 0 for w in v), "four weights > 0"),
    ("model.roi_heads.pool_size", _at_least(1), ">= 1"),
    ("model.roi_heads.head", _one_of(*choices.ROI_HEADS), spell(choices.ROI_HEADS)),
    ("model.roi_heads.representation_size", _at_least(1), ">= 1"),
    ("model.roi_heads.conv_layers", lambda v: all(c >= 1 for c in v), "channel counts >= 1"),
    ("model.roi_heads.score_thresh", _unit, "a probability in 0..1"),
    ("model.roi_heads.nms_thresh", _unit, "an IoU in 0..1"),
    ("model.roi_heads.detections_per_img", _at_least(1), ">= 1"),
    ("model.roi_heads.nms_method", _one_of(*choices.NMS_METHODS), spell(choices.NMS_METHODS)),
    ("model.roi_heads.box_loss", _one_of(*choices.BOX_LOSSES), spell(choices.BOX_LOSSES)),
    ("model.roi_heads.cascade_ious", lambda v: all(0 < iou < 1 for iou in v), "IoUs in (0, 1), e.g. [0.6, 0.7], or []"),
    ("model.roi_heads.soft_nms_sigma", _positive, "> 0"),
    ("model.roi_heads.soft_nms_min_score", _unit, "a score in 0..1"),
    ("data.train.format", _one_of(*choices.DATA_FORMATS), spell(choices.DATA_FORMATS)),
    ("data.val.format", _one_of(*choices.DATA_FORMATS), spell(choices.DATA_FORMATS)),
    ("data.train.num_images", _at_least(1), ">= 1"),
    ("data.val.num_images", _at_least(1), ">= 1"),
    ("data.train.scene", _one_of(*choices.SYNTHETIC_SCENES), spell(choices.SYNTHETIC_SCENES)),
    ("data.val.scene", _one_of(*choices.SYNTHETIC_SCENES), spell(choices.SYNTHETIC_SCENES)),
    ("data.train.class_weights", _optional(lambda v: len(v) == 4 and all(w >= 0 for w in v) and sum(v) > 0),
     "four weights >= 0 (circle, square, triangle, cross), not all 0, or null"),
    ("data.val.class_weights", _optional(lambda v: len(v) == 4 and all(w >= 0 for w in v) and sum(v) > 0),
     "four weights >= 0 (circle, square, triangle, cross), not all 0, or null"),
    ("data.augment.hflip", _unit, "a probability in 0..1"),
    ("data.augment.brightness", _at_least(0), ">= 0 (0 = off)"),
    ("data.augment.contrast", _at_least(0), ">= 0 (0 = off)"),
    ("data.augment.saturation", _at_least(0), ">= 0 (0 = off)"),
    ("data.augment.hue", lambda v: 0 <= v <= 0.5, "in 0..0.5 (a fraction of the hue circle)"),
    ("data.tiles.size", lambda v: v == 0 or v >= MIN_TILE_SIZE, f"0 (off) or >= {MIN_TILE_SIZE} pixels"),
    ("data.tiles.overlap", lambda v: 0 <= v < 0.9, "a fraction in [0, 0.9)"),
    ("data.tiles.min_visible", lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("data.tiles.negative_ratio", _at_least(0), ">= 0 (0 = no crop without objects)"),
    ("data.workers", _at_least(0), ">= 0"),
    ("data.cache", _optional(_one_of(*choices.DATA_CACHES)), f"{spell(choices.DATA_CACHES)} (or null)"),
    ("data.policy", _one_of(*choices.DATA_POLICIES), spell(choices.DATA_POLICIES)),
    ("data.sampler", _one_of(*choices.TRAIN_SAMPLERS), spell(choices.TRAIN_SAMPLERS)),
    ("data.repeat_threshold", lambda v: 0 < v <= 1, "a fraction of the images in (0, 1]"),
    ("train.epochs", _at_least(1), ">= 1"),
    ("train.batch_size", _at_least(1), ">= 1"),
    ("train.max_iters", _optional(_at_least(1)), ">= 1 (or null)"),
    ("train.optimizer.name", _one_of(*choices.OPTIMIZERS), spell(choices.OPTIMIZERS)),
    ("train.optimizer.lr", _positive, "> 0"),
    ("train.optimizer.lr_reference_batch", _optional(_at_least(1)), ">= 1 (or null for no scaling)"),
    ("train.optimizer.backbone_lr_mult", _at_least(0), ">= 0 (0 freezes the backbone's weights in place)"),
    ("train.optimizer.momentum", lambda v: 0 <= v < 1, "in 0..1 (1 excluded)"),
    ("train.optimizer.betas", lambda v: all(0 <= b < 1 for b in v), "two values in 0..1 (1 excluded)"),
    ("train.optimizer.weight_decay", _at_least(0), ">= 0"),
    ("train.scheduler.name", _one_of(*choices.SCHEDULES), spell(choices.SCHEDULES)),
    ("train.scheduler.milestones", lambda v: all(0 < m <= 1 for m in v) and list(v) == sorted(v),
     "increasing fractions of the run in 0..1"),
    ("train.scheduler.step_size", lambda v: 0 < v <= 1, "a fraction of the run in 0..1"),
    ("train.scheduler.gamma", _positive, "> 0"),
    ("train.scheduler.min_lr_factor", _unit, "in 0..1"),
    ("train.scheduler.warmup_iters", _at_least(0), ">= 0"),
    ("train.scheduler.warmup_factor", lambda v: 0 < v <= 1, "in 0..1 (0 excluded)"),
    ("train.scheduler.per", _one_of(*choices.SCHEDULE_STEPS), spell(choices.SCHEDULE_STEPS)),
    ("train.clip_grad_norm", _optional(_positive), "> 0 (or null for no clipping)"),
    ("train.non_finite", _one_of(*choices.NON_FINITE_POLICIES), spell(choices.NON_FINITE_POLICIES)),
    ("train.max_rollbacks", _at_least(0), ">= 0"),
    ("train.rollback_lr_factor", lambda v: 0 < v < 1, "in 0..1 (both excluded)"),
    ("train.accumulate", _at_least(1), ">= 1"),
    ("train.ema_decay", lambda v: 0 < v < 1, "in (0, 1), e.g. 0.9999"),
    ("train.ema_tau", _positive, "> 0 (optimizer steps)"),
    ("train.seed", _at_least(0), ">= 0"),
    ("train.device", lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
     "auto, cpu, cuda or cuda:N"),
    ("train.eval_every", _at_least(1), ">= 1"),
    ("train.patience", _optional(_at_least(1)), ">= 1 epochs (or null: no early stopping)"),
    ("train.checkpoint_every_iters", _optional(_at_least(1)), ">= 1 (or null)"),
    ("train.log_every", _at_least(1), ">= 1"),
    ("train.mlflow", _optional(lambda v: bool(v.strip())), "a tracking URI, e.g. file:runs/mlruns or http://HOST:5000 (or null)"),
    ("train.mlflow_experiment", lambda v: bool(v.strip()), "an experiment name (not empty)"),
    ("train.num_val_images_drawn", _at_least(0), ">= 0"),
    ("inference.slice.size", lambda v: v == 0 or v >= MIN_TILE_SIZE, f"0 (off) or >= {MIN_TILE_SIZE} pixels"),
    ("inference.slice.overlap", lambda v: 0 <= v < 0.9, "a fraction in [0, 0.9)"),
    ("inference.slice.match_threshold", _unit, "an intersection-over-smaller in 0..1"),
    ("inference.slice.batch_size", _at_least(1), ">= 1"),
    ("inference.tta.scales", lambda v: all(s > 0 for s in v), "min_size values of the model's resize, each > 0 pixels"),
    ("inference.tta.match_threshold", lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
]

# Pairs that must be ordered: (lower key, higher key).
ORDERED = [
    ("model.transform.min_size", "model.transform.max_size"),
    ("model.rpn.bg_iou_thresh", "model.rpn.fg_iou_thresh"),
    ("model.roi_heads.bg_iou_thresh", "model.roi_heads.fg_iou_thresh"),
]


def check_config(config: Any, source: str) -> None:
    """Raise a ConfigError naming the source and the dotted key of the first value out of range."""
    check_section(config, "", f"{source}: ")
    for low_key, high_key in ORDERED:
        low, high = _lookup(config, low_key)[1], _lookup(config, high_key)[1]
        if low > high:
            raise ConfigError(f"{source}: {low_key} ({low}) must not be above {high_key} ({high})")
    model = config.model
    if len(model.anchors.sizes) != len(model.anchors.aspect_ratios):
        raise ConfigError(f"{source}: model.anchors.sizes has {len(model.anchors.sizes)} lists but "
                          f"model.anchors.aspect_ratios has {len(model.anchors.aspect_ratios)}; one of each per feature map")


def check_section(section: Any, prefix: str, source: str = "") -> None:
    """The rules of the keys under `prefix` (e.g. "data.augment"), checked on that section alone:
    for code that gets a section without the whole config (an AugmentConfig built by hand)."""
    for key, rule, requirement in RULES:
        if prefix and not key.startswith(prefix + "."):
            continue
        found, value = _lookup(section, key[len(prefix) + 1:] if prefix else key)
        if found and not rule(value):
            raise ConfigError(f"{source}{key} must be {requirement}, got {value!r}")


def _lookup(config: Any, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key; not found when a section on the way is unset (None)."""
    node = config
    for part in key.split("."):
        if node is None:
            return False, None
        node = getattr(node, part)
    return True, node


def check_data_paths(data: Any) -> None:
    """Raise a ConfigError naming the dotted key and the path of a dataset file or folder that
    does not exist (checked when data is about to be read, not at config load)."""
    from detector.data.datasets import resolve_data_path

    for split in ("train", "val"):
        dataset = getattr(data, split)
        if dataset is None or dataset.format == "synthetic":  # drawn on first use
            continue
        for key, kind in (("annotations", "file"), ("images", "folder"), ("root", "folder")):
            value = getattr(dataset, key)
            if value is None:
                continue
            try:
                path = resolve_data_path(value)  # ${DETECTOR_DATA}/NAME/...: an installed data set
            except DataError as error:
                raise ConfigError(f"data.{split}.{key}: {error}") from None
            exists = path.is_file() if kind == "file" else path.is_dir()
            if not exists:
                raise ConfigError(f"data.{split}.{key}: {kind} not found: {path.resolve()}")
