"""Run by tests/engine/test_distributed.py under torchrun: train a config (`--resume`: continue
its run from last.pt), then save this process's final weights (and EMA), metrics and position to
OUT/rank<r>.pt so the test can compare processes."""
import sys

import torch

from detector import load_config
from detector.engine import distributed
from detector.engine.trainer import Trainer

if __name__ == "__main__":
    config_path, out = sys.argv[1], sys.argv[2]
    trainer = Trainer(load_config(config_path), resume="--resume" in sys.argv)
    metrics = trainer.fit()
    ema = {"ema": trainer.ema.module.state_dict(), "ema_updates": trainer.ema.updates} if trainer.ema else {}
    torch.save({"world_size": trainer.world_size, "model": trainer.model.state_dict(), "metrics": metrics,
                "iteration": trainer.iteration, **ema}, f"{out}/rank{trainer.rank}.pt")
    distributed.shutdown()
