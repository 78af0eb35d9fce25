"""Constants and plain functions shared by the test modules; the shared fixtures are in conftest.py.

Importable as `helpers` from any test module: pytest puts tests/ on sys.path (no __init__.py, default import mode).
MLflow is imported inside the functions that need it, so modules that never talk to a tracking store stay cheap.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

# The DNA-repair sub-hierarchy with few simulated genotypes: a search trial trains in seconds on one thread.
SMALL_DATA = ["data=yeast_dna_repair", "train.num_threads=1", "data.genotypes.num_doubles=1500",
              "data.genotypes.num_triples=300", "train.batch_size=128"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(cache_dir: Path, **extra: str) -> dict:
    """This process's environment for a CLI subprocess: cache_dir as the dcell cache, the repo on the path."""
    return {**os.environ, "DCELL_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO), **extra}


def run_python(*args: str, env: dict | None = None, cwd: Path = REPO,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` with this interpreter, output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def search_file(directory: Path, name: str, epochs: int, parameters: dict, *, description: str = "test search",
                overrides: list[str] = (), algorithm: str = "grid", num_samples: int = 1, max_concurrent: int = 1,
                scheduler: dict | None = None, gpu: float = 0) -> Path:
    """directory/NAME.yaml: a search space over SMALL_DATA trained `epochs` epochs (plus `overrides`), maximizing
    val/pearson, one CPU (and `gpu` GPUs) per trial, no scheduler unless one is given."""
    spec = {
        "name": name, "description": description,
        "overrides": [*SMALL_DATA, f"train.epochs={epochs}", *overrides],
        "metric": "val/pearson", "mode": "max",
        "search": {"algorithm": algorithm, "seed": 0, "num_samples": num_samples, "max_concurrent": max_concurrent},
        "scheduler": scheduler if scheduler is not None else {"type": "none"},
        "resources": {"cpu": 1, "gpu": gpu},
        "parameters": parameters,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runs_of(uri: str, experiment: str) -> tuple[list, list]:
    """(search parent runs, trial runs) of an experiment; ([], []) when it does not exist."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("dcell.kind") == "search"],
            [r for r in runs if r.data.tags.get("dcell.kind") == "trial"])


def steps(uri: str, run_id: str, key: str = "epoch") -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def wait_for_server(uri: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Return once the MLflow server `proc` (started with start_new_session) answers at uri; if it exits or stays
    silent for timeout_s, kill its process group and fail the test with the last problem seen."""
    from dcell_core.search.tracking import probe

    deadline = time.time() + timeout_s
    while (problem := probe(uri)) is not None:
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            pytest.fail(f"mlflow server at {uri} did not answer within {timeout_s} s (exit status {proc.returncode}): "
                        f"{problem}")
        time.sleep(0.5)


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """(page, errors): a page of the system's headless chromium driven by playwright (never a downloaded browser),
    and the console errors and uncaught page script errors it sees. Skips the test when chromium is missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium for the browser tests: install it with `apt-get install -y chromium` (Debian; "
                    "bash scripts/setup.sh does that when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])  # root in CI: no sandbox
        page = browser.new_page(viewport={"width": width, "height": height})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        try:
            yield page, errors
        finally:
            browser.close()
