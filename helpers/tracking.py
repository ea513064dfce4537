"""Experiment tracking with MLflow, without any cloud service.

* By default a local store in the run folder: ``<work_dir>/mlflow/mlflow.db`` (sqlite) and
  ``<work_dir>/mlflow/artifacts``. No server is needed to log or to query runs.
* ``MLflowServer`` starts a real ``mlflow server`` on loopback over the same store for the UI (subprocess,
  port check, health wait, clean stop -- like ``helpers.serve.VLLMServer``).
* ``Tracker`` logs parameters, per-step metrics (a Trainer callback), system metrics where MLflow can
  sample them, the dataset fingerprint and the adapter as an artifact. Any tracking failure only warns:
  a broken tracking server must never cost a training run.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from . import paths
from .serve import LoopbackServer, PortBusyError, ServerError, free_port  # noqa: F401 (re-exported)



class TrackingWarning(UserWarning):
    """Tracking failed; training goes on without it."""


def store_dir(work_dir: str | Path | None = None) -> Path:
    path = Path(work_dir or paths.work_dir()) / "mlflow"
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_uri(work_dir: str | Path | None = None) -> str:
    """The run folder's MLflow store: a sqlite file (see also ``sovereign.local_mlflow_uri``)."""
    return f"sqlite:///{store_dir(work_dir) / 'mlflow.db'}"


def local_artifact_root(work_dir: str | Path | None = None) -> str:
    path = store_dir(work_dir) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def reachable(tracking_uri: str, timeout: float = 3.0) -> bool:
    """A local store is always reachable; an HTTP tracking server must answer ``/health``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class Tracker:
    """Logs one training run at a time; every MLflow call is guarded, a failure warns and disables tracking."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "qlora",
                 artifact_root: str | None = None, system_metrics: bool = True,
                 system_metrics_interval: float = 2.0):
        self.tracking_uri = tracking_uri or local_uri()
        self.experiment = experiment
        if artifact_root is None and self.tracking_uri.startswith("sqlite:///"):
            artifact_root = str(Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts")
        self.artifact_root = artifact_root
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.enabled = True
        self.run_id: str | None = None
        self.failures: list[str] = []
        self._client = None
        self._monitor = None

    def __getstate__(self) -> dict:
        # a training process of its own (GPU) gets a copy: settings and run state, not client or monitor threads
        return {**self.__dict__, "_client": None, "_monitor": None}

    # ------------------------------------------------------------------ guarded calls
    def _fail(self, what: str, exc: BaseException) -> None:
        message = (f"MLflow tracking disabled ({what} failed: {type(exc).__name__}: {str(exc)[:200]}). "
                   f"Training continues without tracking; check the tracking URI {self.tracking_uri}.")
        self.failures.append(message)
        self.enabled = False
        warnings.warn(message, TrackingWarning, stacklevel=3)

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._fail(what, exc)
            return None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ run lifecycle
    def start(self, run_name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None):
        if not self.enabled:
            return None
        if not reachable(self.tracking_uri):
            self._fail("connecting", ConnectionError(f"no MLflow server answers at {self.tracking_uri}"))
            return None

        def _start():
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_root and Path(self.artifact_root).as_uri())
            run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
            return run.info.run_id

        self.run_id = self._guard("starting a run", _start)
        if self.run_id is None:
            return None
        self.log_params(params or {})
        if self.system_metrics:
            self._guard("starting system metrics", self._start_system_metrics)
        return self.run_id

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval,
                                             tracking_uri=self.tracking_uri)
        self._monitor.start()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in params.items() if not isinstance(v, (list, dict)) or k == "sources"]
        self._guard("logging parameters", lambda: self.client.log_batch(self.run_id, params=flat) if self.run_id else None)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        if not self.run_id:
            return
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        self._guard("logging metrics", self.client.log_batch, self.run_id, metrics=rows)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for key, value in tags.items():
                self._guard("setting a tag", self.client.set_tag, self.run_id, key, str(value))

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self._guard("logging artifacts", self.client.log_artifacts, self.run_id, str(local_dir), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            self._guard("stopping system metrics", monitor.finish)
        if self.run_id:
            self._guard("ending the run", self.client.set_terminated, self.run_id, status)

    def callback(self):
        """A transformers ``TrainerCallback`` logging every Trainer log line as MLflow metrics per step."""
        from transformers import TrainerCallback

        tracker = self

        class MLflowStepCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    tracker.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                        step=state.global_step)

        return MLflowStepCallback()


# --------------------------------------------------------------------------- querying
def runs_table(tracking_uri: str, experiment: str = "qlora", columns: list[str] | None = None):
    """All runs of an experiment as a DataFrame (params, final metrics), via ``MlflowClient``."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    rows = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        row = {"run_name": run.info.run_name, "run_id": run.info.run_id[:8], "status": run.info.status}
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update({f"metric.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if columns:
        table = table[[c for c in columns if c in table.columns]]
    return table


def metric_history(tracking_uri: str, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)]


def find_run_id(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The newest run with this name (full id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


# --------------------------------------------------------------------------- the UI server
class MLflowServer(LoopbackServer):
    """``with MLflowServer(work_dir) as server: server.url`` -- a real ``mlflow server`` on loopback."""

    name = "mlflow-server"

    def __init__(self, work_dir: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1",
                 backend_uri: str | None = None, artifact_root: str | None = None,
                 log_path: str | Path | None = None):
        port = port or free_port(host)
        super().__init__(host, port, log_path or store_dir(work_dir) / f"mlflow-server-{port}.log")
        self.backend_uri = backend_uri or local_uri(work_dir)
        self.artifact_root = artifact_root or local_artifact_root(work_dir)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                "--default-artifact-root", self.artifact_root, "--host", self.host, "--port", str(self.port),
                "--workers", "1"]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def default_timeout(self) -> float:
        return 120

