"""A recipe that inherits another and changes its data format, or replaces a section on purpose."""
from pathlib import Path

import pytest

from detector import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_dataset_block_naming_its_format_replaces_the_inherited_one(tmp_path):
    """The issue's case: `_base_: raccoon.yaml` with a VOC train block used to inherit the
    recipe's COCO `annotations` key and fail with `data.train.annotations: file not found`."""
    child = write(tmp_path / "voc.yaml", f"_base_: {CONFIGS / 'raccoon.yaml'}\n"
                                         "data:\n  train: {format: voc, root: /data/VOC, split: train}\n")
    config = load_config(child)
    train = config.data.train
    assert (train.format, train.root, train.split) == ("voc", "/data/VOC", "train")
    assert train.annotations is None and train.images is None  # nothing of the COCO block leaked in
    assert config.data.val.format == "coco"  # the block it did not name is still inherited
    assert config.train.epochs == load_config(CONFIGS / "raccoon.yaml").train.epochs


def test_a_dataset_block_without_format_still_merges(tmp_path):
    base = write(tmp_path / "base.yaml", "data:\n  train: {format: coco, images: /img, annotations: /a.json}\n")
    child = write(tmp_path / "child.yaml", f"_base_: {base.name}\ndata:\n  train: {{annotations: /b.json}}\n")
    train = load_config(child).data.train
    assert (train.format, train.images, train.annotations) == ("coco", "/img", "/b.json")


def test_delete_marker_replaces_any_inherited_section(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  rpn: {nms_thresh: 0.6, conv_depth: 2}\n")
    merged = write(tmp_path / "merged.yaml", "_base_: base.yaml\nmodel:\n  rpn: {nms_thresh: 0.65}\n")
    replaced = write(tmp_path / "replaced.yaml", "_base_: base.yaml\nmodel:\n  rpn: {_delete_: true, nms_thresh: 0.65}\n")
    assert load_config(merged).model.rpn.conv_depth == 2
    config = load_config(replaced)
    assert config.model.rpn.nms_thresh == 0.65
    assert config.model.rpn.conv_depth == 1  # back to the default: the base's rpn section is gone
    assert base.exists()


def test_delete_marker_without_a_base_is_harmless(tmp_path):
    alone = write(tmp_path / "alone.yaml", "model:\n  rpn: {_delete_: true, nms_thresh: 0.5}\n")
    assert load_config(alone).model.rpn.nms_thresh == 0.5


def test_delete_marker_must_be_true_or_it_is_an_unknown_key(tmp_path):
    bad = write(tmp_path / "bad.yaml", "model:\n  rpn: {_delete_: 1}\n")
    with pytest.raises(ConfigError, match="_delete_"):
        load_config(bad)
