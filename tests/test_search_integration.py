"""platform.search end to end: real local Ray, real MLflow (sqlite store and an `mlflow server` on 127.0.0.1).

Each test runs the CLI as a user does (`python -m platform.search FILE --project-dir DIR`) on the DNA-repair
sub-hierarchy with few simulated genotypes, then reads what MLflow recorded.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import helpers
from helpers import env_for, free_port, runs_of, steps

pytestmark = pytest.mark.slow
ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 2}


def search_file(tmp_path: Path, name: str, epochs: int, parameters: dict, algorithm: str = "grid",
                num_samples: int = 1, max_concurrent: int = 1, asha: bool = True) -> Path:
    return helpers.search_file(tmp_path, name, epochs, parameters, description="integration test search",
                               algorithm=algorithm, num_samples=num_samples, max_concurrent=max_concurrent,
                               scheduler=ASHA if asha else None)


def run_search(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return helpers.run_python("-m", "platform.search", *args, "--project-dir", str(tmp_path / "project"),
                              env=env_for(tmp_path / "cache"), timeout=timeout)


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"


def test_statuses_asha_stop_failures_and_artifacts(tmp_path):
    # Grid order (last key fastest), one trial at a time: (0.01, 6) trains 3 epochs; (0.01, 400) and
    # (1e-6, 400) fail (no term keeps 400 genes); (1e-6, 6) is worse than the first trial at epoch 1, so ASHA
    # stops it there.
    f = search_file(tmp_path, "itest", 3, {"train.lr": {"grid": [0.01, 1.0e-6]},
                                           "data.ontology.min_genes": {"grid": [6, 400]}})
    r = run_search(tmp_path, str(f), "--max-failures", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    uri = sqlite_uri(tmp_path)
    parents, children = runs_of(uri, "itest")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    by_params = {(c.data.params["train.lr"], c.data.params["data.ontology.min_genes"]): c for c in children}
    good, stopped = by_params[("0.01", "6")], by_params[("1e-06", "6")]
    assert good.info.status == "FINISHED" and steps(uri, good.info.run_id) == [1, 2, 3]
    assert len(steps(uri, good.info.run_id, "val/pearson")) == 3
    assert stopped.info.status == "KILLED" and stopped.data.tags["dcell.stopped_early"] == "true"
    assert steps(uri, stopped.info.run_id) == [1]
    for key in [("0.01", "400"), ("1e-06", "400")]:
        failed = by_params[key]
        assert failed.info.status == "FAILED" and "min_genes=400" in failed.data.tags["dcell.error"]
    client = MlflowClient(tracking_uri=uri)
    top = {a.path for a in client.list_artifacts(good.info.run_id)}
    assert {"plots", "checkpoint", "resolved_config.yaml"} <= top
    assert "checkpoint/model.safetensors" in {a.path for a in client.list_artifacts(good.info.run_id, "checkpoint")}
    assert "plots/val_predictions.png" in {a.path for a in client.list_artifacts(good.info.run_id, "plots")}
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "importances.json", "parallel_coordinates.png", "search_space.yaml"} <= parent_files
    assert parent.data.tags["dcell.data_fingerprint"] and parent.data.tags["dcell.search_file_sha256"]
    assert "1 stopped early" in r.stdout and "2 failed" in r.stdout and "MLflow UI:" in r.stdout


def test_two_trials_on_mlflow_server_with_nan_trial(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    f = search_file(tmp_path, "served", 2, {"loss.alpha": {"grid": [0.3, 1.0e38]}}, max_concurrent=2)
    r = run_search(tmp_path, str(f), "--tracking-uri", mlflow_server)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    parents, children = runs_of(mlflow_server, "served")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    by_alpha = {c.data.params["loss.alpha"]: c for c in children}
    ok, nan = by_alpha["0.3"], by_alpha["1e+38"]  # alpha x aux loss overflows float32 at the first step
    assert ok.info.status == "FINISHED" and steps(mlflow_server, ok.info.run_id) == [1, 2]
    assert nan.info.status == "FAILED" and nan.data.tags["dcell.nonfinite_loss"] == "true"
    assert "loss is" in nan.data.tags["dcell.error"] and steps(mlflow_server, nan.info.run_id) == []
    client = MlflowClient(tracking_uri=mlflow_server)
    assert "checkpoint/model.safetensors" in {a.path for a in client.list_artifacts(ok.info.run_id, "checkpoint")}
    assert not (tmp_path / "project" / "mlflow.db").exists()  # everything went to the server


def test_unreachable_tracking_store_fails_before_any_trial(tmp_path):
    f = search_file(tmp_path, "nowhere", 2, {"loss.alpha": {"grid": [0.3]}})
    r = run_search(tmp_path, str(f), "--tracking-uri", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert r.returncode == 2 and "not reachable" in r.stderr
    assert not (tmp_path / "project" / "ray_results").exists()


# Resuming after SIGINT, SIGTERM and SIGKILL: tests/test_search_ledger.py (no duplicate runs, all epochs once,
# counters and overhead true).
