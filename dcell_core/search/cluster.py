"""The Ray cluster a search runs on: connect with the project's code and MLflow settings, and refuse a tracking
store that trials on other nodes could not write to.

On an existing cluster (`--address`) every trial gets this checkout of `dcell_core` through Ray's runtime_env
`py_modules` (uploaded once, unpacked on each node), so the code that runs is the code whose commit the parent
run records; the dependencies (torch, ray, mlflow, ...) must be installed on every node (see clusters/).
"""
from __future__ import annotations

from pathlib import Path

from dcell_core.search import tracking

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # dcell_core/
NODE_PROBE_TIMEOUT_S = 180  # first task on a node: unpack py_modules, start a worker, import mlflow


class ClusterMismatch(ValueError):
    """The tracking store or the nodes do not fit the cluster: reported in one message, exit status 2."""


def runtime_env(address: str | None) -> dict:
    env = {"env_vars": tracking.client_env()}
    if address:
        env["py_modules"] = [str(PACKAGE_DIR)]
        env["excludes"] = ["__pycache__", "*.pyc"]
    return env


def connect(address: str | None, verbose: bool = False) -> None:
    """Start a local Ray (address None) or join a cluster; workers' output reaches the console only if verbose."""
    import logging

    import ray

    ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING, runtime_env=runtime_env(address))


def check_tracking(address: str | None, uri: str, cpu: float, gpu: float) -> None:
    """On a cluster, refuse a tracking URI that some trial could not reach: a local store (sqlite, file) when the
    cluster has more than one node, a loopback address when trials can run on another machine, an HTTP server that
    a live node cannot reach (asked by a zero-CPU task pinned to each node, which also proves the node can run the
    project's code). Nodes the autoscaler has yet to add count as other machines when no live node can run a
    trial."""
    if not address:
        return
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = {n["NodeID"]: n for n in nodes}[ray.get_runtime_context().get_node_id()]
    growing = autoscaling_reason(nodes, cpu, gpu)
    if tracking.is_local_store(uri):
        reason = f"has {len(nodes)} live nodes" if len(nodes) > 1 else growing
        if reason:
            raise ClusterMismatch(
                f"the tracking store {uri} is a local file, but the Ray cluster at {address} {reason}: trials on "
                "other nodes cannot write to it. Start an MLflow server that every node can reach (mlflow server "
                "--host 0.0.0.0 --backend-store-uri postgresql://... --artifacts-destination ..., see "
                "docs/cluster.md) and pass --tracking-uri http://<server-ip>:<port>")
        return
    if tracking.is_loopback(uri):
        elsewhere = sorted({n["NodeManagerAddress"] for n in nodes} - {here["NodeManagerAddress"]})
        reason = f"has nodes on other machines ({', '.join(elsewhere)})" if elsewhere else growing
        if reason:
            raise ClusterMismatch(
                f"the tracking URI {uri} names this machine's loopback address, but the Ray cluster at {address} "
                f"{reason}: trials there would look for the server on their own machine. Pass the server's address "
                "on the cluster network: --tracking-uri http://<server-ip>:<port>")
    problems = probe_from_nodes(nodes, uri)
    if problems:
        listed = "; ".join(f"node {node}: {problem}" for node, problem in problems.items())
        raise ClusterMismatch(
            f"the MLflow server {uri} answers the driver but not every Ray node ({listed}). Pass a --tracking-uri "
            "that the nodes can reach (the server's address inside the cluster network) and install the project's "
            "dependencies on every node")


def autoscaling_reason(nodes: list[dict], cpu: float, gpu: float) -> str | None:
    """Why trials will run on nodes that do not exist yet, or None: no live node has the CPUs and GPUs a trial asks
    for, so its trials wait for nodes the autoscaler adds."""
    if any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes):
        return None
    return (f"has no live node with the {cpu:g} CPU and {gpu:g} GPU a trial asks for: trials will run on nodes "
            "the autoscaler adds")


def probe_from_nodes(nodes: list[dict], uri: str) -> dict[str, str]:
    """node -> what went wrong, for every live node whose probe of `uri` failed or never answered."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(tracking.probe)
    refs = {f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})":
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(uri)
            for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=NODE_PROBE_TIMEOUT_S)
    problems = {}
    for node, ref in refs.items():
        if ref not in ready:
            problems[node] = f"no answer within {NODE_PROBE_TIMEOUT_S} s"
            continue
        try:
            problem = ray.get(ref)
        except ray.exceptions.RayError as e:  # the node could not run the probe (missing package, dead worker)
            problem = f"cannot run the project's code: {str(e).strip().splitlines()[-1]}"
        if problem is not None:
            problems[node] = problem
    return problems
