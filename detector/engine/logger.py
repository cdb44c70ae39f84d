"""What a run tells its user: log lines (console and train.log), a progress bar with ETA,
results.csv with one row per epoch (and its plot). TensorBoard and MLflow: dashboards.py."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from tqdm import tqdm


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.log_file = open(self.run_dir / "train.log", "a") if enabled else None

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        tqdm.write(message, file=sys.stdout)
        self.log_file.write(message + "\n")
        self.log_file.flush()

    def warning(self, message: str) -> None:
        self.info(f"WARNING: {message}")

    def progress(self, total: int, description: str) -> tqdm:
        return tqdm(total=total, desc=description, unit="it", dynamic_ncols=True, disable=not self.enabled, leave=False,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0)

    def scalars(self, values: dict[str, float], iteration: int) -> None:
        if not self.enabled:
            return
        self.log_file.write(f"iter {iteration}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()) + "\n")
        self.log_file.flush()

    def results_row(self, row: dict) -> None:
        if not self.enabled:
            return
        path = self.run_dir / "results.csv"
        new_file = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.info("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        from detector.engine.plots import plot_training_curves

        plot_training_curves(path, self.run_dir / "curves.png")

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
