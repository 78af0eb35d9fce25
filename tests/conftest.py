from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import DATA, env_for, free_port, wait_for_server


@pytest.fixture
def hand_cfg():
    """OntologyConfig over the hand-made ontology (tests/data/ontology/hand.obo + hand.gaf)."""
    from dcell_core.ontology.config import OntologyConfig

    def make(**kw):
        base = dict(obo=str(DATA / "ontology" / "hand.obo"), annotations=str(DATA / "ontology" / "hand.gaf"),
                    annotation_source="gaf", min_genes=3)
        base.update(kw)
        return OntologyConfig(**base)

    return make


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for CLI subprocesses: private cache dir, repo on the path."""
    return env_for(tmp_path / "cache")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls when the 2 shared cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ledger_store(tmp_path):
    """(client, experiment id, parent run id): a real sqlite MLflow store with one open search parent run."""
    from mlflow.tracking import MlflowClient

    from dcell_core.search import ledger

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    parent = ledger.open_parent(client, exp, "s-1", {}, {"metric": "val/pearson", "mode": "max"})
    return client, exp, parent


@pytest.fixture
def mlflow_server(tmp_path):
    """The URI of a plain `mlflow server` on 127.0.0.1 (sqlite store and artifacts under tmp_path/server)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
                            cwd=store, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_for_server(uri, proc, timeout_s=90)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
