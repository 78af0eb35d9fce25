"""platform.search on a simulated multi-node Ray cluster with a real MLflow server, and the faults a cluster has.

The cluster is `ray.cluster_utils.Cluster`: a head node without CPUs (it runs the driver, never a trial) and worker
nodes of 1 CPU and 1 fake GPU each, all real Ray processes on this machine sharing its filesystem. Trials ask for
{cpu: 1, gpu: 0.5}. The server is the one the cluster configs run, clusters/mlflow_server.sh (basic-auth app,
--host 0.0.0.0, --allowed-hosts), on a sqlite store. The tests run the CLI as a user does (`--address` the cluster,
`--tracking-uri` the server), lose a node by killing its processes, restart the server by killing it and
starting it again on the same port, and read what MLflow recorded.

The nodes' own environment has no MLflow credentials and MLFLOW_HTTP_REQUEST_MAX_RETRIES=0: a trial there is
refused by the server and gives up at the first failed request, unless the search passes it the driver's MLflow
client settings (it must, see dcell_core.search.cluster). Every test here relies on the credentials arriving; the
server-restart test also on the retry settings.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import helpers
from helpers import REPO, env_for, free_port, runs_of, steps, wait_for_server

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STORE_MB = 80 * 1024 * 1024  # object store per node: trials pass nothing big through it
NODE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
WORKER = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": STORE_MB, "env_vars": NODE_ENV}
ADMIN_PASSWORD = "cluster-test-" + os.urandom(8).hex()  # the basic-auth app wants 12 characters or more


class MlflowServer:
    """clusters/mlflow_server.sh on a free port (sqlite stores, artifacts proxied), killed and restarted on the same
    port with the same stores."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        env = {**os.environ, "MLFLOW": str(Path(sys.executable).parent / "mlflow"), "DCELL_MLFLOW_WORKERS": "1",
               "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "DCELL_MLFLOW_DIR": str(self.root / "conf")}
        self.proc = subprocess.Popen(
            ["bash", str(REPO / "clusters" / "mlflow_server.sh"), f"sqlite:///{self.root / 'mlflow.db'}",
             str(self.root / "artifacts"), f"sqlite:///{self.root / 'auth.db'}", str(self.port)],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_server(self.uri, self.proc, timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # one auth mode for every node and the driver (see ARCHITECTURE)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                          "object_store_memory": STORE_MB, "env_vars": NODE_ENV})
        yield c
        c.shutdown()


@pytest.fixture
def workers(cluster):
    """add(n, **settings) starts n worker nodes (WORKER with these settings); those still alive are removed after
    the test."""
    added = []

    def add(n: int, **settings) -> list:
        nodes = [cluster.add_node(**{**WORKER, **settings}) for _ in range(n)]
        added.extend(nodes)
        cluster.wait_for_nodes()
        return nodes

    yield add
    for node in added:
        if node in cluster.worker_nodes:
            cluster.remove_node(node)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, and its admin credentials in this process's environment (the tests' clients and the searches'
    drivers use them; the nodes do not have them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        s = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
        s.start()
        yield s
        s.kill()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # built once, shared by the module's searches


def search_file(tmp_path: Path, name: str, epochs: int, lrs: list[float], plots: bool = True) -> Path:
    return helpers.search_file(tmp_path, name, epochs, {"train.lr": {"grid": lrs}}, description="cluster test search",
                               overrides=[f"train.plots={str(plots).lower()}"], max_concurrent=2, gpu=0.5)


def search_cmd(tmp_path: Path, f: Path, cluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "platform.search", str(f), "--address", cluster.address,
            "--project-dir", str(tmp_path / "project"), *args]


def run_search(cmd: list[str], cache_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env_for(cache_dir), capture_output=True, text=True, timeout=timeout)


def start_search(cmd: list[str], cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env_for(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(proc: subprocess.Popen, condition, what: str, timeout_s: float = 240):
    """Poll condition() until it returns something truthy; fail if the search ends first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the search ended before {what}:\n" + proc.stdout.read()[-4000:])
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {what} within {timeout_s} s:\n" + proc.stdout.read()[-4000:])


def finish(proc: subprocess.Popen, timeout_s: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out[-5000:]
    return out


def test_server_script_admits_authenticated_clients_by_cluster_address(server):
    import requests

    url = "/api/2.0/mlflow/experiments/search?max_results=1"
    auth = ("admin", ADMIN_PASSWORD)
    node_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    assert requests.get(f"http://{node_ip}:{server.port}{url}", auth=auth, timeout=10).status_code == 200
    assert requests.get(server.uri + url, timeout=10).status_code == 401  # no user, no answer
    assert requests.get(server.uri + url, auth=("admin", "not-the-password"), timeout=10).status_code == 401
    rebound = requests.get(server.uri + url, auth=auth, headers={"Host": f"elsewhere.example:{server.port}"},
                           timeout=10)
    assert rebound.status_code == 403  # a Host header not on --allowed-hosts


def test_half_gpu_trials_spread_over_worker_nodes_and_reach_the_server(tmp_path, cluster, workers, server,
                                                                        cache_dir):
    nodes = workers(2)
    f = search_file(tmp_path, "spread", 2, [0.01, 0.005])
    r = run_search(search_cmd(tmp_path, f, cluster, "--tracking-uri", server.uri), cache_dir)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    parents, children = runs_of(server.uri, "spread")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    assert parents[0].data.tags["dcell.ray_address"] == cluster.address
    placed = {c.data.tags["dcell.ray_node_id"] for c in children}
    assert placed == {n.node_id for n in nodes}  # one trial per worker node, none on the head
    client = MlflowClient(tracking_uri=server.uri)
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["dcell.gpu_ids"] == "0"  # its node's fake GPU
        assert steps(server.uri, c.info.run_id) == [1, 2]
        assert steps(server.uri, c.info.run_id, "val/pearson") == [1, 2]
        top = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert {"plots", "checkpoint", "resolved_config.yaml"} <= top
        assert "checkpoint/model.safetensors" in {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")}
        assert "plots/val_predictions.png" in {a.path for a in client.list_artifacts(c.info.run_id, "plots")}
    assert {"summary.csv", "search_space.yaml"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert not (tmp_path / "project" / "mlflow.db").exists()  # everything went to the server


def test_lost_node_trials_continue_from_checkpoints_on_other_nodes(tmp_path, cluster, workers, server, cache_dir):
    nodes = {n.node_id: n for n in workers(3)}  # two trials at a time, one node to spare
    f = search_file(tmp_path, "nodeloss", 5, [0.01, 0.005], plots=False)
    proc = start_search(search_cmd(tmp_path, f, cluster, "--tracking-uri", server.uri), cache_dir)

    def trial_at_epoch_2():
        _, children = runs_of(server.uri, "nodeloss")
        return next((c for c in children if len(steps(server.uri, c.info.run_id)) >= 2), None)

    victim = wait_for(proc, trial_at_epoch_2, "trial at epoch 2")
    lost = victim.data.tags["dcell.ray_node_id"]
    cluster.remove_node(nodes[lost], allow_graceful=False)  # SIGKILL: raylet, agents, the trial's worker
    out = finish(proc)
    parents, children = runs_of(server.uri, "nodeloss")
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2 and sorted(c.data.params["train.lr"] for c in children) == ["0.005", "0.01"]
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:  # every epoch exactly once, the lost ones included
        assert steps(server.uri, c.info.run_id) == [1, 2, 3, 4, 5], out[-4000:]
    moved = {c.info.run_id: c for c in children}[victim.info.run_id]
    attempts = moved.data.tags["dcell.ray_nodes"].split(",")
    assert attempts[0] == lost and attempts[-1] != lost and attempts[-1] in nodes
    # Continued from a checkpoint, not from epoch 0. The node may die between MLflow receiving epoch 2 and Tune
    # registering that epoch's checkpoint, so the checkpoint it resumes from can be epoch 1's.
    assert int(moved.data.tags["dcell.resumed_from_epoch"]) >= 1
    assert int(moved.data.tags["dcell.retries"]) >= 1 and "retry 1 from its last checkpoint" in out


def test_trials_ride_out_an_mlflow_server_restart(tmp_path, cluster, workers, server, cache_dir):
    workers(2)
    f = search_file(tmp_path, "restart", 5, [0.01, 0.005], plots=False)
    # --max-failures 0: no Tune retry can hide a failed request, only MLflow's own retries carry the trials
    proc = start_search(search_cmd(tmp_path, f, cluster, "--tracking-uri", server.uri, "--max-failures", "0"),
                        cache_dir)

    def both_trials_logging():
        _, children = runs_of(server.uri, "restart")
        return len(children) == 2 and all(steps(server.uri, c.info.run_id) for c in children)

    wait_for(proc, both_trials_logging, "two trials past epoch 1")
    server.kill()
    time.sleep(5)  # trials go on training and fail to log while the server is down
    server.start()
    out = finish(proc)
    parents, children = runs_of(server.uri, "restart")
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    for c in children:
        why = f"{c.info.status} {c.data.tags.get('dcell.error')}\n{out[-4000:]}"
        assert c.info.status == "FINISHED" and "dcell.retries" not in c.data.tags, why
        assert steps(server.uri, c.info.run_id) == [1, 2, 3, 4, 5], out[-4000:]
        assert steps(server.uri, c.info.run_id, "val/pearson") == [1, 2, 3, 4, 5]


def test_local_tracking_store_refused_on_a_multi_node_cluster(tmp_path, cluster, workers, cache_dir):
    workers(1)
    f = search_file(tmp_path, "refused", 1, [0.01])
    r = run_search(search_cmd(tmp_path, f, cluster), cache_dir, timeout=120)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "is a local file" in r.stderr and "has 2 live nodes" in r.stderr
    assert "--tracking-uri http://" in r.stderr and "mlflow server --host 0.0.0.0" in r.stderr
    assert not (tmp_path / "project" / "mlflow.db").exists()
    assert not (tmp_path / "project" / "ray_results").exists()


def test_loopback_tracking_uri_refused_when_a_node_is_on_another_machine(tmp_path, workers, cluster, server,
                                                                       cache_dir):
    # Ray tells machines apart by node address: a node on 127.0.0.2 is another machine, whose 127.0.0.1 is not ours.
    workers(1, node_ip_address="127.0.0.2")
    f = search_file(tmp_path, "loopback", 1, [0.01])
    r = run_search(search_cmd(tmp_path, f, cluster, "--tracking-uri", server.uri), cache_dir, timeout=120)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"the tracking URI {server.uri} names this machine's loopback address" in r.stderr
    assert "has nodes on other machines (127.0.0.2)" in r.stderr and "--tracking-uri http://<server-ip>" in r.stderr
    assert runs_of(server.uri, "loopback") == ([], [])


def test_server_unreachable_from_one_node_refused(tmp_path, cluster, workers, server, cache_dir):
    # The second node sends HTTP through a proxy that is not there: the driver reaches the server, that node cannot.
    workers(1)
    [cut_off] = workers(1, env_vars={**NODE_ENV, "HTTP_PROXY": f"http://127.0.0.1:{free_port()}", "NO_PROXY": ""})
    f = search_file(tmp_path, "unreachable", 1, [0.01])
    r = run_search(search_cmd(tmp_path, f, cluster, "--tracking-uri", server.uri), cache_dir, timeout=240)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"answers the driver but not every Ray node (node {cut_off.node_ip_address} ({cut_off.node_id[:8]})" \
        in r.stderr
    assert "ProxyError" in r.stderr or "proxy" in r.stderr.lower()
    assert runs_of(server.uri, "unreachable") == ([], [])
