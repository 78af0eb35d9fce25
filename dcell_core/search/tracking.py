"""MLflow records of a search: one experiment per search name, a parent run per search, a child run per trial.

Child runs are found by tags (parent run id + Ray trial id), never by creation order, so a trial that is
retried or resumed writes to the run it already has; statuses are set explicitly (FINISHED, FAILED, KILLED).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TAG_PARENT = "mlflow.parentRunId"
TAG_TRIAL = "dcell.trial_id"
TAG_KIND = "dcell.kind"  # "search" (parent) or "trial" (child)
TAG_STOPPED = "dcell.stopped_early"
TAG_ERROR = "dcell.error"
TAG_NONFINITE = "dcell.nonfinite_loss"
MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or opened; raised before any trial starts."""


def default_tracking_uri(project_dir: Path) -> str:
    return f"sqlite:///{(project_dir / 'mlflow.db').resolve()}"


def default_artifact_root(project_dir: Path) -> Path:
    return (project_dir / "mlartifacts").resolve()


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_reachable(uri: str, timeout_s: int = 5) -> MlflowClient:
    """A client for `uri` after one real request; a clear TrackingUnavailable otherwise."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # any failure of the first request means: no usable store
        raise TrackingUnavailable(f"MLflow tracking store {uri} is not reachable: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return client


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment called `name`, created with artifacts under artifact_root/<name> when new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def find_child_run(client: MlflowClient, exp_id: str, parent_run_id: str, trial_id: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and "
                                                      f"tags.`{TAG_TRIAL}` = '{trial_id}'", max_results=2)
    if len(runs) > 1:
        raise RuntimeError(f"two MLflow runs for trial {trial_id} of parent run {parent_run_id}")
    return runs[0] if runs else None


def child_runs(client: MlflowClient, exp_id: str, parent_run_id: str) -> list:
    return list(client.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                                   max_results=10000))


def start_child_run(client: MlflowClient, exp_id: str, parent_run_id: str, trial_id: str, run_name: str,
                    params: dict, tags: dict) -> str:
    """The trial's run id: its existing run set back to RUNNING, or a new run with params and tags."""
    run = find_child_run(client, exp_id, parent_run_id, trial_id)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(exp_id, run_name=run_name,
                            tags={TAG_PARENT: parent_run_id, TAG_TRIAL: trial_id, TAG_KIND: "trial", **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def log_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int) -> None:
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    for i in range(0, len(rows), MAX_BATCH):
        client.log_batch(run_id, metrics=rows[i:i + MAX_BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def run_name(params: dict, limit: int = 240) -> str:
    """'norm_type=batch,activation=gelu' from sampled Hydra keys (last key component)."""
    parts = [f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items()]
    return ",".join(parts)[:limit] or "trial"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + "+".join(map(str, v)) + "]"
    return str(v)


def log_artifacts(client: MlflowClient, run_id: str, paths: Iterable[Path], artifact_path: str | None) -> None:
    for p in paths:
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path)
        elif p.exists():
            client.log_artifact(run_id, str(p), artifact_path)
