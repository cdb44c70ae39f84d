"""Test-time settings: what may change in a trained model without touching its weights, and the
one rule by which eval, analyze, predict, serve and export apply them.

A checkpoint's own config builds its model; a `model.*` key typed on the command line changes
it only if it is in TEST_TIME_KEYS, and is refused by name otherwise (never silently ignored).
An exported file has these settings baked in (detector/inference/exported.py refuses them).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from detector.config import parse_override, set_dotted
from detector.errors import ConfigError

# The resize and the test-time proposal / detection settings. Everything else in `model` is
# fixed by the checkpoint's weights.
TEST_TIME_KEYS = (
    "model.transform.min_size", "model.transform.max_size",
    "model.rpn.pre_nms_top_n_test", "model.rpn.post_nms_top_n_test", "model.rpn.nms_thresh",
    "model.rpn.score_thresh", "model.rpn.min_box_size",
    "model.roi_heads.score_thresh", "model.roi_heads.nms_thresh", "model.roi_heads.detections_per_img",
    "model.roi_heads.nms_method", "model.roi_heads.soft_nms_sigma", "model.roi_heads.soft_nms_min_score",
    "train.keep_freed_memory",  # not the model's, the process's (engine/allocator.py): off for a shared process
)
MODEL_PREFIX = "model."

# What training never reads: the proposal counts and detection post-processing of eval mode, and
# test-time augmentation / sliced prediction. Changing one of these leaves the trained weights as
# they are, so tools/ablation.py measures it on them instead of training again. (The resize and
# the RPN's NMS are test-time settings too, but training uses them.) Sliced prediction does steer
# training's validation, which picks best.pt and, with train.patience, when training stops.
EVAL_ONLY_KEYS = (
    "model.rpn.pre_nms_top_n_test", "model.rpn.post_nms_top_n_test",
    "model.roi_heads.score_thresh", "model.roi_heads.nms_thresh", "model.roi_heads.detections_per_img",
    "model.roi_heads.nms_method", "model.roi_heads.soft_nms_sigma", "model.roi_heads.soft_nms_min_score",
)
EVAL_ONLY_PREFIX = "inference."


def is_eval_only(key: str) -> bool:
    """Whether training never reads `key` (see EVAL_ONLY_KEYS)."""
    return key in EVAL_ONLY_KEYS or key.startswith(EVAL_ONLY_PREFIX)


def select_test_time_overrides(overrides: Sequence[str]) -> list[str]:
    """Of a command's key=value overrides (eval, analyze: data.* and train.batch_size pick the
    data), those meant for the loaded model: every `model.*` key, so that one the weights fix is
    refused by name rather than ignored, and the other TEST_TIME_KEYS (the process's)."""
    return [override for override in overrides
            if (key := parse_override(override)[0]).startswith(MODEL_PREFIX) or key in TEST_TIME_KEYS]


def apply_test_time_overrides(config: dict, overrides: Sequence[str], weights: object) -> dict:
    """A copy of the config dict saved with checkpoint `weights`, with `overrides` applied; a key
    outside TEST_TIME_KEYS is a ConfigError naming it and what may change instead."""
    config = copy.deepcopy(config)
    for override in overrides:
        key, value = parse_override(override)
        if key not in TEST_TIME_KEYS:
            raise ConfigError(f"{key}: fixed by the checkpoint {weights} (its weights depend on it); "
                              f"what can change at test time: {', '.join(TEST_TIME_KEYS)}")
        set_dotted(config, key, value)
    return config
