"""Crashes for real: `kill -9` while checkpoints are being written, and a training process
killed mid-run then resumed, which must end with the weights of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import torch

from detector.config import save_config
from detector.engine.checkpoint import load_checkpoint
from detector.engine.tensorboard_log import tensorboard_installed

from test_trainer import tiny_config

SAVE_FOREVER = """
import sys, torch
from detector.engine.checkpoint import save_checkpoint
i = 0
while True:
    save_checkpoint({"model": {"w": torch.full((4_000_000,), float(i))}, "i": i}, sys.argv[1])
    print(i, flush=True)
    i += 1
"""


def wait_for(condition, timeout=600.0):  # a guard against a hang, not a timing check: a busy machine needed > 120 s
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_during_checkpoint_writes_leaves_a_loadable_last_pt(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.0, 0.05, 0.11, 0.17, 0.23):  # kill at different moments of a ~16 MB write
        process = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # one whole checkpoint exists
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = load_checkpoint(path)
        assert torch.equal(state["model"]["w"], torch.full((4_000_000,), float(state["i"])))


def train_command(config_path, *extra):
    return [sys.executable, "-m", "detector.cli", "train", str(config_path), *extra]


def test_training_killed_with_sigkill_and_resumed_equals_an_uninterrupted_run(tmp_path):
    extra = ("data.val=null", "train.checkpoint_every_iters=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float reduction order in both runs
    for name in ("straight", "killed"):
        save_config(tiny_config(tmp_path, name, *extra), tmp_path / f"{name}.yaml")

    subprocess.run(train_command(tmp_path / "straight.yaml"), check=True, env=env, capture_output=True)
    straight = load_checkpoint(tmp_path / "straight" / "weights" / "last.pt")
    assert straight["iteration"] == 6

    last = tmp_path / "killed" / "weights" / "last.pt"
    process = subprocess.Popen(train_command(tmp_path / "killed.yaml"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: last.exists() and load_checkpoint(last)["iteration"] >= 4)  # mid-epoch 2
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(last)["iteration"]
    assert killed_at < 6, "the run finished before it could be killed"

    subprocess.run(train_command(tmp_path / "killed.yaml", "--resume"), check=True, env=env, capture_output=True)
    resumed = load_checkpoint(last)
    assert resumed["iteration"] == 6
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])

    if tensorboard_installed():  # train.tensorboard: null, so both runs wrote events
        from test_dashboards import assert_same_curves, curves

        killed_curves = curves(tmp_path / "killed")
        assert [step for step, _ in killed_curves["train/loss"]] == [1, 2, 3, 4, 5, 6]
        assert_same_curves(killed_curves, curves(tmp_path / "straight"))
