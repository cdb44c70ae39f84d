"""MLflow tracking (`train.mlflow: URI`, the extra `mlflow`): the scalars TensorBoard gets, the
config as params (flattened dotted keys: `train.optimizer.lr`), and the run folder as the run's
artifacts at the end.

The MLflow run's id is kept in the run folder (`mlflow_run.json`), so `--resume` continues the
same MLflow run. MLflow cannot delete logged points: steps that a killed run logged after its last
checkpoint, or that a rollback runs again, hold two values there (TensorBoard drops the stale ones).

A failure once training runs is one warning, not the end of the run: hours of training are worth
more than the points. The client has already retried for minutes by then (7 times with backoff by
default: MLFLOW_HTTP_REQUEST_MAX_RETRIES), so the outage is not a blip, and each further call
would block training as long again: the run sends no more points, and at the end tries once to
upload the run folder and finish the MLflow run.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from detector.config import flatten_config
from detector.dependencies import require
from detector.errors import ConfigError

RUN_RECORD = "mlflow_run.json"  # in the run folder: {"uri", "run_id"} of the MLflow run it logs to
MAX_PARAMS_PER_CALL = 100  # MLflow's limit for log_batch
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (since 2.x; longer values are cut)


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"train.optimizer.lr": "0.08", ...}: every leaf of a nested dict, values as MLflow stores them."""
    return {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten_config(tree, prefix).items()}


def is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


class MLflowWriter:
    """One MLflow run, new or (when `resuming` and the run folder names one at the same URI) continued."""

    def __init__(self, uri: str, experiment: str, run_dir: Path, params: dict[str, str], resuming: bool,
                 warn: Callable[[str], None]):
        mlflow = require("mlflow", "mlflow", "train.mlflow")
        if is_file_store(uri):
            # MLflow 3 refuses a file store unless this is set; a file: URI in the config is that choice.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri, self.warn = uri, warn
        self.gave_up = False  # a call failed after the client's retries: no more points are sent
        self.record = Path(run_dir) / RUN_RECORD
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            self.run_id = (self._continued_run() if resuming else None) or self._new_run(experiment, Path(run_dir).name)
            known = self.client.get_run(self.run_id).data.params
            # A continued run keeps its params: MLflow refuses to change a logged value.
            self._log_params({k: v for k, v in params.items() if k not in known})
        except Exception as error:  # noqa: BLE001 - mlflow raises its own and the HTTP client's errors
            raise ConfigError(f"train.mlflow: cannot start an MLflow run at {uri}: {_first_line(error)}") from None
        self.record.write_text(json.dumps({"uri": uri, "run_id": self.run_id}))

    def _continued_run(self) -> str | None:
        if not self.record.is_file():
            return None
        record = json.loads(self.record.read_text())
        if record.get("uri") != self.uri:
            return None
        try:
            self.client.update_run(record["run_id"], status="RUNNING")
        except Exception as error:  # noqa: BLE001 - deleted on the server, most often; a lost server fails next
            self.warn(f"train.mlflow: cannot continue MLflow run {record['run_id']} ({_first_line(error)}); "
                      "starting a new one")
            return None
        return record["run_id"]

    def _new_run(self, experiment: str, run_name: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        return self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_CALL])

    def restart_at(self, step: int) -> None:
        pass  # MLflow keeps every point it was sent (module docstring)

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.gave_up:
            return
        now = int(time.time() * 1000)
        self._try(lambda: self.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in values.items()]),
            "training goes on without sending MLflow more points")

    def images(self, images: dict[str, Any], step: int) -> None:
        pass  # the drawn val images are in the run folder's eval/, which close() uploads

    def close(self, run_dir: Path) -> None:
        """The run folder as the run's artifacts, then the run marked finished (tried even after
        giving up on points: the server may be back)."""
        if self._try(lambda: self.client.log_artifacts(self.run_id, str(run_dir)), "the run folder was not uploaded"):
            self._try(lambda: self.client.set_terminated(self.run_id, "FINISHED"), "the run was not marked finished")

    def _try(self, call: Callable[[], Any], consequence: str) -> bool:
        try:
            call()
            return True
        except Exception as error:  # noqa: BLE001 - a lost server must not end the training (module docstring)
            self.warn(f"train.mlflow: {self.uri}: {_first_line(error)}; {consequence}")
            self.gave_up = True
            return False


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")  # it is followed by "; what happens now"
