from pathlib import Path

import pytest
import yaml

from detector import ConfigError, build_model, load_config
from detector.config import Config, config_to_dict, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_base_files_spell_out_exactly_the_defaults(tmp_path):
    """configs/_base_/{lite0,train}.yaml document every default: they must equal the dataclasses."""
    both = tmp_path / "both.yaml"
    both.write_text(f"_base_: [{CONFIGS / '_base_' / 'lite0.yaml'}, {CONFIGS / '_base_' / 'train.yaml'}]\n")
    assert config_to_dict(load_config(both)) == config_to_dict(Config())

    def keys(tree, prefix=""):
        return {prefix + k for k in tree} | {
            key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, f"{prefix}{k}.")
        }

    written = {}
    for name in ("lite0.yaml", "train.yaml"):
        written.update(yaml.safe_load((CONFIGS / "_base_" / name).read_text()))
    assert keys(written) == keys(config_to_dict(Config()))  # every key written out, none unknown


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_a_model(path):
    config = load_config(path, ["model.backbone.pretrained=false"])
    model = build_model(config)
    assert len(model.backbone.featmap_names) == len(config.model.anchors.sizes)


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  num_classes: 5\n  rpn: {nms_thresh: 0.6, conv_depth: 2}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  rpn: {nms_thresh: 0.65}\n")
    config = load_config(tmp_path / "child.yaml", ["model.roi_heads.score_thresh=0.3", "model.anchors.sizes=[[64, 128]]"])
    assert config.model.num_classes == 5
    assert config.model.rpn.nms_thresh == 0.65 and config.model.rpn.conv_depth == 2  # merged, not replaced
    assert config.model.roi_heads.score_thresh == 0.3
    assert config.model.anchors.sizes == [[64.0, 128.0]]
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.rpn.nms_tresh=0.5", "unknown key model.rpn.nms_tresh; did you mean model.rpn.nms_thresh"),
        ("model.num_classes=three", "model.num_classes must be int, got 'three'"),
        ("model.backbone.fpn=1", "model.backbone.fpn must be bool"),
        ("model.roi_heads.box_reg_weights=[1, 2]", "model.roi_heads.box_reg_weights must have 4 values"),
        ("model.anchors.sizes=[[a]]", r"model.anchors.sizes\[0\]\[0\] must be float"),
        ("model_rpn=1", "unknown key model_rpn; did you mean model"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    "path, name",
    [
        ("resnet50_fpn.yaml", "fasterrcnn_resnet50_fpn"),
        ("resnet50_fpn_v2.yaml", "fasterrcnn_resnet50_fpn_v2"),
        ("mobilenet_v3_large_fpn.yaml", "fasterrcnn_mobilenet_v3_large_fpn"),
    ],
)
def test_torchvision_recipes_equal_the_builders(path, name):
    from detector import torchvision_config

    ours = config_to_dict(load_config(CONFIGS / path, ["model.backbone.pretrained=false", "model.num_classes=90"]))
    theirs = config_to_dict(torchvision_config(name))
    assert ours == theirs


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer.lr=-0.01", r"train.optimizer.lr must be > 0, got -0.01"),
        ("train.optimizer.lr=0", r"train.optimizer.lr must be > 0"),
        ("model.rpn.fg_iou_thresh=1.5", r"model.rpn.fg_iou_thresh must be an IoU in 0..1, got 1.5"),
        ("model.roi_heads.nms_thresh=-0.1", r"model.roi_heads.nms_thresh must be an IoU in 0..1"),
        ("model.roi_heads.nms_method=soft", r"model.roi_heads.nms_method must be hard, gaussian or linear, got .soft."),
        ("model.roi_heads.soft_nms_sigma=0", r"model.roi_heads.soft_nms_sigma must be > 0"),
        ("model.rpn.bg_iou_thresh=0.8", r"model.rpn.bg_iou_thresh \(0.8\) must not be above model.rpn.fg_iou_thresh \(0.7\)"),
        ("model.roi_heads.bg_iou_thresh=0.6", r"model.roi_heads.bg_iou_thresh \(0.6\) must not be above model.roi_heads.fg_iou_thresh"),
        ("model.transform.min_size=2000", r"model.transform.min_size \(2000\) must not be above model.transform.max_size"),
        ("train.batch_size=0", r"train.batch_size must be >= 1, got 0"),
        ("train.optimizer.name=adagrad", r"train.optimizer.name must be sgd, adam, adamw or rmsprop, got 'adagrad'"),
        ("train.optimizer.momentum=1.0", r"train.optimizer.momentum must be in 0..1 \(1 excluded\)"),
        ("train.scheduler.milestones=[0.9, 0.5]", r"train.scheduler.milestones must be increasing fractions"),
        ("train.clip_grad_norm=-1", r"train.clip_grad_norm must be > 0 \(or null for no clipping\)"),
        ("train.device=gpu", r"train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("data.policy=lenient", r"data.policy must be skip or strict, got 'lenient'"),
        ("data.train={format: cocoa}", r"data.train.format must be coco, voc, yolo or synthetic, got 'cocoa'"),
        ("model.anchors.aspect_ratios=[[0.5, 1.0], [1.0]]", r"model.anchors.sizes has 1 lists but model.anchors.aspect_ratios has 2"),
        ("model.anchors.sizes=[[0, 64]]", r"model.anchors.sizes must be one non-empty list of sizes > 0 per feature map"),
    ],
)
def test_out_of_range_values_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_missing_data_path_is_named_with_its_key(tmp_path):
    from detector.config_checks import check_data_paths
    from detector.engine.trainer import Trainer

    config = load_config(None, [f"data.train={{format: coco, annotations: {tmp_path / 'none.json'}}}",
                                f"output={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=f"data.train.annotations: file not found: {tmp_path / 'none.json'}"):
        Trainer(config)
    (tmp_path / "a.json").write_text("{}")
    config = load_config(None, [f"data.val={{format: coco, annotations: {tmp_path / 'a.json'}, images: {tmp_path / 'imgs'}}}"])
    with pytest.raises(ConfigError, match=f"data.val.images: folder not found: {tmp_path / 'imgs'}"):
        check_data_paths(config.data)
    config = load_config(None, [f"data.val={{format: voc, root: {tmp_path / 'VOC'}}}"])
    with pytest.raises(ConfigError, match="data.val.root: folder not found: .*VOC"):
        check_data_paths(config.data)
