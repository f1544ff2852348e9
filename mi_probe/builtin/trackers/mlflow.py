"""Built-in tracking sink ``mlflow``: one MLflow run per mi-probe run, its spec as
params and its metadata as tags; every training epoch's values as metrics
``<label>/<name>`` (step: the epoch) as they come; at the end the tables, figures and
``index.html`` as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.trackers._common import require
from mi_probe.plugin import hookimpl

#: MLflow's limits on a param's key and value
_KEY, _VALUE = 250, 6000


class MlflowParams(BaseModel):
    """An MLflow run (needs the [mlflow] extra)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["mlflow"] = "mlflow"
    tracking_uri: str | None = Field(
        None, description="where runs are stored: a server (http://host:5000) or a "
        "database (sqlite:///mlflow.db); None: MLflow's own default (the "
        "MLFLOW_TRACKING_URI variable, else its local default)")
    experiment: str | None = Field(None, description="MLflow experiment; None: the spec's "
                                   "name")
    run_name: str | None = Field(None, description="None: <spec name>/<run folder>")
    artifact_location: str | None = Field(
        None, description="where a NEW experiment keeps its artifacts (a folder or URI); "
        "None: the tracking store's default (for a sqlite: store, ./mlruns in the working "
        "folder)")


class MlflowTracker:
    def __init__(self, params: MlflowParams) -> None:
        self.params = params
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: Any) -> None:
        require("mlflow", "mlflow", "mlflow")
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.params.tracking_uri)
        name = self.params.experiment or run.name
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=self.params.artifact_location)
        tags = {"mi_probe.run_dir": str(run.run_dir),
                **{f"mi_probe.{k}": str(v) for k, v in run.metadata.items()}}
        created = self.client.create_run(
            experiment_id, run_name=self.params.run_name or
            f"{run.name}/{Path(run.run_dir).name}", tags=tags)
        self.run_id = created.info.run_id
        params = [Param(key[:_KEY], text[:_VALUE]) for key, text in run.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("mi_probe.status", "running")])

    def log_epoch(self, label: str, epoch: int, values: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{label}/{name}", value, now, epoch)
                   for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_results(self, run_dir: Path, tables: Mapping[str, Any],
                    figures: Sequence[Path]) -> None:
        if (run_dir / "tables").is_dir():
            self.client.log_artifacts(self.run_id, str(run_dir / "tables"), "tables")
        for path in figures:
            self.client.log_artifact(self.run_id, str(path), "figures")
        if (run_dir / "index.html").is_file():
            self.client.log_artifact(self.run_id, str(run_dir / "index.html"))

    def close(self, status: str) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag("mi_probe.status", status)])
        state = {"complete": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, state)
        self.run_id = None


@hookimpl
def mi_probe_register_trackers(register):
    register("mlflow", MlflowTracker, MlflowParams)
