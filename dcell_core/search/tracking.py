"""MLflow records of a search: one experiment per search name, a parent run per search, a child run per trial.

Child runs are found by tags (parent run id + Ray trial id), never by creation order, so a trial that is
retried or resumed writes to the run it already has; statuses are set explicitly (FINISHED, FAILED, KILLED).
"""
from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

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


def is_loopback(uri: str) -> bool:
    """An http(s) URI whose host is this machine only (localhost, 127.0.0.0/8, ::1)."""
    host = urlparse(uri).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whatever it resolves to, it names a machine on some network
        return False


# MLflow client settings every process of a search must share. Retries carry trials and the driver through a
# restart of the tracking server (MLflow's defaults: 7 retries with backoff, about 2 minutes); credentials and
# TLS settings reach a basic-auth server. Ray workers on other nodes do not inherit the driver's environment, so
# the driver passes these to every trial explicitly (Ray's runtime_env env_vars).
RETRY_SETTINGS = (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
                  MLFLOW_HTTP_REQUEST_BACKOFF_JITTER, MLFLOW_HTTP_REQUEST_TIMEOUT)
PASSED_TO_TRIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "MLFLOW_TRACKING_INSECURE_TLS")


def client_env() -> dict[str, str]:
    """The driver's MLflow client settings for the trials: the retry settings always (the driver's values, or
    MLflow's defaults), credentials and TLS settings where the driver has them."""
    env = {setting.name: str(setting.get()) for setting in RETRY_SETTINGS}
    env.update({name: os.environ[name] for name in PASSED_TO_TRIALS if name in os.environ})
    return env


def probe(uri: str, timeout_s: int = 5) -> str | None:
    """None when one request to the tracking store succeeds, else what went wrong (one line).

    An HTTP server is asked once, without MLflow's retries, and for at most timeout_s: this runs before a search
    starts, where minutes of retries against a wrong address help nobody. Nothing else is changed: the driver and
    the trials keep their retry settings (see client_env)."""
    try:
        if uri.startswith(("http://", "https://")):
            endpoint = "/api/2.0/mlflow/experiments/search"
            response = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=timeout_s,
                                    params={"max_results": 1})
            verify_rest_response(response, endpoint)
        else:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # any failure of the request means: no usable store, said in one line
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def check_reachable(uri: str, timeout_s: int = 5) -> MlflowClient:
    """A client for `uri` after one real request (see probe); a clear TrackingUnavailable otherwise."""
    problem = probe(uri, timeout_s)
    if problem is not None:
        raise TrackingUnavailable(f"MLflow tracking store {uri} is not reachable: {problem}")
    return MlflowClient(tracking_uri=uri)


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
