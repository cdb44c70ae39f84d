"""A run with `data.sampler: repeat_factor`: it prints each class's factor and the effective epoch
length, and trains exactly ceil(N_eff / B) iterations per epoch."""
import math

from detector.data.repeat_factor import class_repeat_factors, image_repeat_factors
from detector.engine.trainer import Trainer

from test_trainer import tiny_config


def test_a_repeat_factor_run_prints_its_factors_and_keeps_exact_epochs(tmp_path):
    config = tiny_config(tmp_path, "run", "data.val=null", "data.sampler=repeat_factor", "data.repeat_threshold=1.0")
    trainer = Trainer(config)
    labels = [r.labels[~r.iscrowd] for r in trainer.train_set.records]
    factors = class_repeat_factors(labels, 1.0)
    effective = round(image_repeat_factors(labels, factors).sum())
    assert effective > len(labels)  # t = 1: every class in fewer than all 6 images is repeated
    assert trainer.accounting.iters_per_epoch == math.ceil(effective / 2)
    trainer.fit()
    assert trainer.iteration == 2 * math.ceil(effective / 2)

    log = (tmp_path / "run" / "train.log").read_text()
    names = trainer.train_set.category_map.names
    listed = ", ".join(f"{names[label - 1]} {r:.2f}" for label, r in factors.items())
    assert f"data.sampler: repeat_factor (threshold 1): repeat factor per class: {listed}" in log
    assert "effective epoch length round(" in log and f") = {effective} samples" in log
    assert (f"{effective} training samples per epoch (data.sampler: repeat_factor over 6 images), batch 2 -> "
            f"{math.ceil(effective / 2)} iterations per epoch") in log
