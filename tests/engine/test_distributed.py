"""Training with torch.distributed: 2 CPU processes (gloo) started by torchrun on the demo data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector.config import save_config
from detector.data import build_loader
from detector.engine.evaluation import evaluate_model
from detector.inference.predictor import Predictor
from detector.engine.builders import Accounting
from detector.engine.tensorboard_log import tensorboard_installed

from test_trainer import tiny_config

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_each_process_gets_a_distinct_shard_of_every_epoch():
    ratios = [1.5, 0.7, 1.2, 1.0, 0.5, 2.0, 0.8]  # 7 images, 2 processes -> 4 each (one repeated)

    class Ratios(torch.utils.data.Dataset):
        def __len__(self):
            return len(ratios)

        def aspect_ratios(self):
            return ratios

    def shards(epoch):
        result = []
        for rank in (0, 1):
            sampler = torch.utils.data.DistributedSampler(range(7), num_replicas=2, rank=rank, shuffle=True, seed=3)
            loader = build_loader(Ratios(), 2, train=True, seed=3 + rank, sampler=sampler)
            loader.batch_sampler.set_epoch(epoch)
            batches = list(loader.batch_sampler)
            assert len(batches) == len(loader) == Accounting(7, 2, False, 1, None, world_size=2).iters_per_epoch == 2
            result.append(sorted(i for batch in batches for i in batch))
        return result

    first, second = shards(0)
    assert len(first) == len(second) == 4
    assert set(first) | set(second) == set(range(7)) and len(set(first) & set(second)) <= 1  # padding repeats one
    assert shards(1) != shards(0)  # set_epoch reshuffles (the same way on every process)


def test_accounting_with_several_processes():
    accounting = Accounting(10, 2, False, 3, None, world_size=4)
    assert accounting.images_per_process == 3 and accounting.iters_per_epoch == 2 and accounting.total_iters == 6
    assert ("10 training images over 4 processes -> ceil(10 / 4) = 3 per process; batch 2 per process, global batch 8 "
            "-> 2 iterations per epoch (ceil(3 / 2)); 3 epochs -> 6 iterations") in accounting.describe()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_cpu_processes_train_in_step_evaluate_like_one_and_resume(tmp_path):
    config = tiny_config(tmp_path, "run", "data.val={format: synthetic, root: %s, num_images: 5, seed: 1, split: val}"
                         % (tmp_path / "synthetic"), "model.roi_heads.score_thresh=0.0")  # detections from a young model
    save_config(config, tmp_path / "config.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(tmp_path / "config.yaml"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for key, value in ranks[0]["model"].items():  # DDP kept every parameter and buffer in step
        assert torch.equal(value, ranks[1]["model"][key]), key

    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "distributed: 2 processes (gloo), batch 2 per process, global batch 4" in log
    assert "6 training images over 2 processes -> ceil(6 / 2) = 3 per process" in log
    assert "learning rate 0.02: train.optimizer.lr 0.08 per 16 images x 4 images per step / 16" in log
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs: one writer
    assert rows[0].startswith("epoch,iteration,lr,loss_objectness,loss_rpn_box_reg,loss_classifier,loss_box_reg,loss,")
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["best.pt", "last.pt"]
    if tensorboard_installed():  # train.tensorboard: null, so on; rank 0 alone writes
        from test_dashboards import curves

        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        assert [step for step, _ in curves(run)["train/loss"]] == [1, 2, 3, 4]  # 2 iterations per epoch
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # every process gets rank 0's metrics

    # The gathered evaluation equals a single-process evaluation of the same weights.
    predictor = Predictor.from_checkpoint(run / "weights" / "last.pt", device="cpu")
    assert all(torch.equal(v, ranks[0]["model"][k]) for k, v in predictor.model.state_dict().items())
    from detector.data import load_dataset

    val = load_dataset(config.data.val, predictor_categories(predictor))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_model(predictor.model, val, torch.device("cpu"), tmp_path / "single", batch_size=2)
    finally:
        torch.set_num_threads(threads)
    distributed_metrics = {k: v for k, v in ranks[0]["metrics"].items() if k != "epoch"}
    assert single == distributed_metrics
    gathered = json.loads((run / "eval" / "predictions.json").read_text())
    assert len({d["image_id"] for d in gathered}) == 5  # every val image, each once
    assert gathered == json.loads((tmp_path / "single" / "predictions.json").read_text())  # the same detections

    # --resume: every process loads the same last.pt and the run goes on in step.
    save_config(tiny_config(tmp_path, "run", "train.epochs=3", "data.val=null"), tmp_path / "longer.yaml")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(tmp_path / "longer.yaml"), str(tmp_path), "--resume"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["iteration"] for r in resumed] == [6, 6]  # 4 done + 2 more (2 per epoch per process)
    for key, value in resumed[0]["model"].items():
        assert torch.equal(value, resumed[1]["model"][key]), key
    assert not torch.equal(resumed[0]["model"]["roi_heads.box_predictor.cls_score.weight"],
                           ranks[0]["model"]["roi_heads.box_predictor.cls_score.weight"])  # it trained on
    assert (run / "train.log").read_text().count("resumed from") == 1  # rank 0 logs, once
    if tensorboard_installed():
        assert [step for step, _ in curves(run)["train/loss"]] == [1, 2, 3, 4, 5, 6]


def predictor_categories(predictor):
    from detector.data import CategoryMap

    return CategoryMap(tuple(predictor.category_ids), tuple(predictor.category_names))


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch):
    from detector import cli

    launched = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command, env: launched.append(command) or subprocess.CompletedProcess(command, 0))
    assert cli.main(["train", "configs/demo.yaml", "train.epochs=1", "--nproc", "2", "--resume"]) == 0
    assert launched == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "detector.cli", "train", "configs/demo.yaml", "train.epochs=1", "--resume"]]
