"""EMA of the weights (`train.ema`, engine/ema.py): the ramp, what evaluation and checkpoints hold,
a kill -9 and --resume that end bit-identical to an uninterrupted run, and DDP processes in step."""
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from detector import ConfigError, load_config
from detector.config import save_config
from detector.data import load_dataset
from detector.data.repeat_factor import class_repeat_factors, image_repeat_factors
from detector.engine.checkpoint import load_checkpoint
from detector.engine.ema import ModelEMA
from detector.engine.evaluation import evaluate_model
from detector.engine.trainer import Trainer
from detector.inference.predictor import Predictor

from test_crash_resume import train_command, wait_for
from test_trainer import tiny_config

EMA = ("train.ema=true", "train.ema_decay=0.9", "train.ema_tau=2")


def test_the_average_follows_the_ramp_and_copies_counters():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = 1.0
    for step, value in enumerate((3.0, 5.0, -1.0), start=1):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model[1].num_batches_tracked.fill_(10 * step)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-step / 2.0))  # 0.354, 0.569, 0.699 by hand
        expected = d * expected + (1 - d) * value
        assert ema.current_decay() == pytest.approx(d)
        torch.testing.assert_close(ema.module[0].weight, torch.full((1, 2), expected))
        assert int(ema.module[1].num_batches_tracked) == 10 * step  # an integer buffer is copied, not averaged
    assert ema.updates == 3 and not any(p.requires_grad for p in ema.module.parameters())
    assert model[0].weight.requires_grad  # the model itself is untouched


@pytest.mark.parametrize("override, key", [("train.ema_decay=1.0", "train.ema_decay"),
                                           ("train.ema_decay=0", "train.ema_decay"),
                                           ("train.ema_tau=0", "train.ema_tau")])
def test_bad_ema_settings_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_evaluation_and_best_pt_use_the_average_and_checkpoints_keep_both(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "run", *EMA, "model.roi_heads.score_thresh=0.0"))
    metrics = trainer.fit()
    best = load_checkpoint(tmp_path / "run" / "weights" / "best.pt")
    assert best["ema_updates"] == trainer.ema.updates == 6  # one per optimizer step: 3 per epoch x 2
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(best["model"][key], value), key
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(best["train_model"][key], value), key
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(best["model"][name], best["train_model"][name])  # two different sets

    predictor = Predictor.from_checkpoint(tmp_path / "run" / "weights" / "best.pt", device="cpu")
    scored = evaluate_model(predictor.model, trainer.val_set, torch.device("cpu"), tmp_path / "again", batch_size=2)
    assert scored == {k: v for k, v in metrics.items() if k != "epoch"}  # the average was what got scored
    assert "EMA of the weights: decay 0.9, ramp tau 2" in (tmp_path / "run" / "train.log").read_text()


def test_training_killed_with_sigkill_resumes_the_average_bit_identically(tmp_path):
    extra = ("data.val=null", "train.checkpoint_every_iters=1", *EMA)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("straight", "killed"):
        save_config(tiny_config(tmp_path, name, *extra), tmp_path / f"{name}.yaml")
    subprocess.run(train_command(tmp_path / "straight.yaml"), check=True, env=env, capture_output=True)
    straight = load_checkpoint(tmp_path / "straight" / "weights" / "last.pt")

    last = tmp_path / "killed" / "weights" / "last.pt"
    process = subprocess.Popen(train_command(tmp_path / "killed.yaml"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: last.exists() and load_checkpoint(last)["iteration"] >= 4)  # mid-epoch 2
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert load_checkpoint(last)["iteration"] < 6, "the run finished before it could be killed"

    subprocess.run(train_command(tmp_path / "killed.yaml", "--resume"), check=True, env=env, capture_output=True)
    resumed = load_checkpoint(last)
    assert resumed["iteration"] == 6 and resumed["ema_updates"] == straight["ema_updates"] == 6
    for entry in ("model", "train_model"):  # the average and the optimizer's weights
        for key, value in straight[entry].items():
            assert torch.equal(value, resumed[entry][key]), (entry, key)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_keep_the_same_average_over_repeat_factor_epochs(tmp_path):
    """One torchrun for two checks: the EMA is the same on both processes, and both share one
    repeat-factor draw per epoch (exact iterations: ceil(ceil(N_eff / 2 processes) / batch 2))."""
    config = tiny_config(tmp_path, "run", "data.val=null", "train.epochs=1", *EMA,
                         "data.sampler=repeat_factor", "data.repeat_threshold=1.0")
    save_config(config, tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path / "config.yaml"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    labels = [r.labels[~r.iscrowd] for r in load_dataset(config.data.train).records]
    effective = round(image_repeat_factors(labels, class_repeat_factors(labels, 1.0)).sum())
    steps = math.ceil(math.ceil(effective / 2) / 2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["iteration"] for r in ranks] == [r["ema_updates"] for r in ranks] == [steps, steps]
    for key, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][key]), key
    saved = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert all(torch.equal(v, saved["model"][k]) for k, v in ranks[0]["ema"].items())
    assert f"{effective} training samples per epoch (data.sampler: repeat_factor over 6 images) over 2 processes" \
        in (tmp_path / "run" / "train.log").read_text()
