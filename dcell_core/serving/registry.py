"""The MLflow Model Registry side of a promotion, and `models:/` URIs for prediction.

A promoted checkpoint directory is stored as an MLflow 3 LoggedModel of the winner's experiment (its
artifacts are exactly the checkpoint files: no MLmodel flavor, no pickled code), and registered as a version
of the registered model whose `source` is `models:/<model_id>`. The version carries tags naming its run,
metric, hierarchy fingerprint and weights hash; the alias (e.g. `production`) names the version in use
(aliases, not the deprecated stages). `models:/dcell@production` downloads the checkpoint directory.
"""
from __future__ import annotations

import re
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

TAG_RUN, TAG_METRIC, TAG_MODE, TAG_VALUE = "dcell.run_id", "dcell.metric", "dcell.mode", "dcell.metric_value"
TAG_FINGERPRINT, TAG_WEIGHTS = "dcell.data_fingerprint", "dcell.weights_sha256"
TAG_SEARCH, TAG_PARENT = "dcell.search", "dcell.parent_run_id"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


class PromotionRefused(RuntimeError):
    """The alias holds a model at least as good (or not comparable) and --force was not given; exit 1."""


def check_model_name(name: str, what: str = "--model-name") -> str:
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def _missing(e: MlflowException) -> bool:
    return e.error_code == "RESOURCE_DOES_NOT_EXIST"


def alias_version(client: MlflowClient, name: str, alias: str):
    """The version `name@alias` points to, or None when the model or the alias does not exist yet."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if _missing(e):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def version_of_run(client: MlflowClient, name: str, run_id: str, weights_sha256: str):
    """The earliest version of `name` registered from `run_id` with these weights, or None."""
    found = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
             if v.tags.get(TAG_WEIGHTS) == weights_sha256]
    return min(found, key=lambda v: int(v.version)) if found else None


def check_replaces(current, name: str, alias: str, tags: dict, force: bool) -> None:
    """Refuse to move `alias` from `current` to a run that is not better by the same metric on the same
    hierarchy (unless force). `tags` are the candidate version's tags."""
    if current is None or force or current.tags.get(TAG_RUN) == tags[TAG_RUN]:
        return
    held = current.tags
    desc = (f"{name}@{alias} is version {current.version} (run {held.get(TAG_RUN)}, {held.get(TAG_METRIC)} "
            f"{held.get(TAG_VALUE)} ({held.get(TAG_MODE)}), hierarchy {held.get(TAG_FINGERPRINT)})")
    for key, label in ((TAG_METRIC, "metric"), (TAG_MODE, "mode"), (TAG_FINGERPRINT, "hierarchy fingerprint")):
        if held.get(key) != tags[key]:
            raise PromotionRefused(f"{desc}; the candidate run {tags[TAG_RUN]} has {label} {tags[key]}: the two "
                                   "are not comparable. Pass --force to replace it anyway")
    old, new = float(held[TAG_VALUE]), float(tags[TAG_VALUE])
    better = new > old if tags[TAG_MODE] == "max" else new < old
    if not better:
        raise PromotionRefused(f"{desc}; the candidate run {tags[TAG_RUN]} has {tags[TAG_METRIC]} {new!r}, which "
                               "is not better: production keeps its model. Pass --force to replace it anyway")


def ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not _missing(e):
            raise
        client.create_registered_model(name, description=description)


def register(client: MlflowClient, tracking_uri: str, name: str, experiment_id: str, run_id: str,
             checkpoint_dir: Path, tags: dict, description: str):
    """A new version of `name` whose artifacts are `checkpoint_dir` (a LoggedModel of the run's experiment)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    ensure_registered_model(client, name, description)
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        client.log_model_artifacts(logged.model_id, str(checkpoint_dir))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    # MLflow's SQL registry store looks the LoggedModel up through MlflowClient() with the process-wide tracking
    # URI, not this client's (a TODO in mlflow 3.17): point it at our store while the version is created.
    with _use_tracking_uri(tracking_uri):
        return client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id, tags=tags,
                                           description=description, model_id=logged.model_id)


def resolve_model_uri(client: MlflowClient, uri: str):
    """The ModelVersion of `models:/NAME@ALIAS` or `models:/NAME/VERSION` (a ValueError when it is not there)."""
    m = MODEL_URI.fullmatch(uri)
    if not m:
        raise ValueError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(m["name"], m["alias"])
        return client.get_model_version(m["name"], m["version"])
    except MlflowException as e:
        if _missing(e):
            raise ValueError(f"model URI {uri}: {e.message}") from e
        raise


def download_version(client: MlflowClient, version, tracking_uri: str, dst: Path) -> Path:
    """Download the files of a model version, pinned by number (a moving alias cannot change them midway).

    The version's storage location is resolved with this client: `download_artifacts("models:/...")` would
    resolve it through the process-wide registry URI instead of this store's.
    """
    import mlflow.artifacts

    location = client.get_model_version_download_uri(version.name, str(version.version))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst),
                                                    tracking_uri=tracking_uri))
