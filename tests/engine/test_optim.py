"""Parameter groups, optimizers and schedules, with hand-computed learning rates."""

import pytest
import torch

from detector import build_model, load_config
from detector.config import OptimizerConfig, SchedulerConfig
from detector.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups


@pytest.fixture(scope="module")
def model():
    return build_model(load_config(None, ["model.backbone.pretrained=false", "model.backbone.trainable_layers=6", "model.backbone.frozen_bn=false"]))


def test_reused_backbone_learns_slower_and_norms_and_biases_skip_decay(model):
    groups = {g["name"]: g for g in parameter_groups(model, OptimizerConfig(lr=0.02, backbone_lr_mult=0.1, weight_decay=1e-4), True)}
    assert set(groups) == {"backbone", "backbone/no_decay", "new", "new/no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.002) and groups["new"]["lr"] == 0.02
    assert groups["new/no_decay"]["weight_decay"] == 0.0 and groups["new"]["weight_decay"] == 1e-4
    new_ids = {id(p) for p in groups["new"]["params"]}
    assert id(model.roi_heads.box_head.fc6.weight) in new_ids and id(model.rpn.head.cls_logits.weight) in new_ids
    no_decay_ids = {id(p) for p in groups["new/no_decay"]["params"]}
    assert id(model.roi_heads.box_head.fc6.bias) in no_decay_ids
    batch_norm = next(m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert id(batch_norm.weight) in {id(p) for p in groups["backbone/no_decay"]["params"]}
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters() if p.requires_grad)  # each once


def test_frozen_layers_are_left_out_and_random_backbone_is_not_reused():
    frozen = build_model(load_config(None, ["model.backbone.pretrained=false", "model.backbone.trainable_layers=0"]))
    groups = parameter_groups(frozen, OptimizerConfig(), backbone_pretrained=False)
    assert {g["name"] for g in groups} == {"new", "new/no_decay"}
    assert all(p.requires_grad for g in groups for p in g["params"])


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(model, name, kind):
    optimizer = build_optimizer(model, OptimizerConfig(name=name, lr=0.01, nesterov=(name == "sgd")), True)
    assert isinstance(optimizer, kind)
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]


def test_warmup_then_multistep_hand_computed():
    cfg = SchedulerConfig(name="multistep", milestones=[0.5, 0.75], gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, 100, 10, cfg) == 1.0
    assert lr_factor(49, 100, 10, cfg) == 1.0 and lr_factor(50, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(75, 100, 10, cfg) == pytest.approx(0.01)


def test_per_epoch_schedules_only_move_at_epoch_boundaries():
    cfg = SchedulerConfig(name="step", step_size=0.25, gamma=0.5, warmup_iters=0, per="epoch")
    # 8 epochs of 10 iterations: halve every 2 epochs, constant within an epoch
    factors = [lr_factor(i, 80, 10, cfg) for i in range(80)]
    assert factors[:20] == [1.0] * 20 and factors[20:40] == [0.5] * 20 and factors[79] == 0.125
    cosine = SchedulerConfig(name="cosine", warmup_iters=0, min_lr_factor=0.0, per="iter")
    assert lr_factor(50, 100, 10, cosine) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, cosine) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_after_the_optimizer(model):
    optimizer = build_optimizer(model, OptimizerConfig(lr=0.1), True)
    scheduler = build_scheduler(optimizer, SchedulerConfig(warmup_iters=4, warmup_factor=0.0, milestones=[0.5]), 8, 4)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[-1]["lr"])
        optimizer.zero_grad()
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.01, 0.01, 0.01, 0.01])
    with pytest.raises(Exception, match="unknown schedule 'linear'"):
        build_scheduler(optimizer, SchedulerConfig(name="linear"), 8, 4)
