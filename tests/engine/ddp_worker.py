"""Run by tests/engine/test_distributed.py under torchrun: train a config, then save this
process's final weights and metrics to OUT/rank<r>.pt so the test can compare processes."""
import sys

import torch

from detector import load_config
from detector.engine import distributed
from detector.engine.trainer import Trainer

if __name__ == "__main__":
    config_path, out = sys.argv[1], sys.argv[2]
    trainer = Trainer(load_config(config_path))
    metrics = trainer.fit()
    torch.save({"world_size": trainer.world_size, "model": trainer.model.state_dict(), "metrics": metrics},
               f"{out}/rank{trainer.rank}.pt")
    distributed.shutdown()
