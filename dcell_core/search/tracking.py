"""MLflow plumbing of a search: the tracking store (reachable, writable, created safely), client settings shared
with the trials, and batched writes. What the record means (tags, statuses, scores) is owned by ledger.py.
"""
from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from mlflow.entities import Metric, RunTag
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response

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
    """A client for `uri` after one real request (see probe); a clear TrackingUnavailable otherwise.

    A sqlite store is checked writable first (its directory, and the file when it exists), so a path that cannot
    be written fails at once instead of after MLflow's retries; its first open, which creates the tables and runs
    the schema migrations, holds an exclusive lock of the store's directory, so two drivers that create one new
    store at once do not race (the second waits, then finds the tables made)."""
    db = sqlite_path(uri)
    if db is not None:
        from dcell_core.search.lease import directory_lock
        from dcell_core.search.preflight import check_writable

        try:
            check_writable(db.parent, "the directory of the MLflow sqlite store")
            db.parent.mkdir(parents=True, exist_ok=True)
            if db.exists():
                with open(db, "ab"):
                    pass
        except OSError as e:
            raise TrackingUnavailable(f"MLflow tracking store {uri} is not writable: {e}") from e
        with directory_lock(db.parent):
            problem = probe(uri, timeout_s)
    else:
        problem = probe(uri, timeout_s)
    if problem is not None:
        raise TrackingUnavailable(f"MLflow tracking store {uri} is not reachable: {problem}")
    return MlflowClient(tracking_uri=uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


# A search's experiment is a model-training experiment: the tag and value MLflow's UI kind selector writes
# (mlflow/server/js: setExperimentTag "mlflow.experimentKind"). MLflow 3.17's UI navigates by its global
# GenAI / Model training switch (GenAI unless chosen), which opens any experiment on its GenAI overview (traces,
# token usage: empty for a search); runs_view_url selects Model training and the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment called `name`, a model-training experiment (EXPERIMENT_KIND), created with artifacts under
    artifact_root/<name> when new; an existing one without a kind gets it (one its user chose is kept)."""
    key, kind = EXPERIMENT_KIND
    found = client.get_experiment_by_name(name)
    if found is not None:
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, kind)
        return found.experiment_id
    location = (artifact_root / name).as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location, tags={key: kind})


def runs_view_url(ui_url: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in the MLflow UI served at ui_url (the UI's hash route, with its
    workflow switch on Model training)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
