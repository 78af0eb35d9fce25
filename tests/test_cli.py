"""The command-line entry points, run as a user runs them: subprocesses from the repo root."""
from __future__ import annotations

import json
import os
import sysconfig

from helpers import REPO, run_python

EXPECTED = json.loads((REPO / "tests" / "expectations" / "snapshot.json").read_text())


def run(args, env):
    return run_python(*args, env=env)


def test_ontology_cli_json(subprocess_env):
    r = run(["-m", "dcell_core.ontology", "data=yeast_dna_repair", "--json"], subprocess_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"terms", "genes", "strata", "parameters", "fingerprint"} <= set(out)
    exp = EXPECTED["yeast_dna_repair"]
    assert (out["terms"], out["genes"], out["strata"], out["fingerprint"]) == \
        (exp["terms"], exp["genes"], exp["strata"], exp["fingerprint"])
    assert sum(out["strata"]) == out["terms"]


def test_ontology_cli_text_and_override(subprocess_env):
    r = run(["-m", "dcell_core.ontology", "data=yeast_dna_repair", "data.ontology.min_genes=20"], subprocess_env)
    assert r.returncode == 0, r.stderr
    terms = int(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("terms")))
    assert terms < EXPECTED["yeast_dna_repair"]["terms"]
    assert "fingerprint" in r.stdout and EXPECTED["yeast_dna_repair"]["fingerprint"] not in r.stdout


def test_ontology_cli_misuse_exits_2(subprocess_env):
    r = run(["-m", "dcell_core.ontology", "data.ontology.min_gene=3"], subprocess_env)
    assert r.returncode == 2 and "data.ontology.min_gene" in r.stderr
    r = run(["-m", "dcell_core.ontology", "data.ontology.min_genes=abc"], subprocess_env)
    assert r.returncode == 2 and "'abc'" in r.stderr and "min_genes" in r.stderr
    r = run(["-m", "dcell_core.ontology", "data.ontology.filter_order=[evidence,bogus]"], subprocess_env)
    assert r.returncode == 2 and "bogus" in r.stderr
    r = run(["-m", "dcell_core.ontology", "data.ontology.obo=/no/such.obo"], subprocess_env)
    assert r.returncode == 2 and "/no/such.obo" in r.stderr


def test_platform_module_runs_with_stdlib_shim(subprocess_env):
    """`python -m platform.doctor` from the repo root: our package shadows the standard `platform`, yet torch,
    ray and mlflow import and the standard API answers."""
    r = run(["-m", "platform.doctor", "--json"], subprocess_env)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    import platform as std_platform

    assert info["os"].startswith(std_platform.system())
    assert info["torch"].startswith("2.13.0") and info["ray"] and info["mlflow"]
    r = run(["-c", "import platform, sys; print(platform.__file__); print(platform.python_version())"],
            subprocess_env)
    assert r.returncode == 0 and r.stdout.split()[1] == std_platform.python_version()


def test_platform_ui_without_a_store_exits_2(subprocess_env, tmp_path):
    r = run(["-m", "platform.ui", "--project-dir", str(tmp_path)], subprocess_env)
    assert r.returncode == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in r.stderr


def test_platform_clis_run_from_any_directory(tmp_path):
    """Outside the repo root and without PYTHONPATH, the venv's start-up hook (dcell_core/_platform_path.py, installed
    by scripts/setup.sh) makes the standard `platform` the package of the CLIs; its own API is untouched."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DCELL_CACHE_DIR"] = str(tmp_path / "cache")
    r = run_python("-m", "platform.promote", "--help", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage: python -m platform.promote")
    r = run_python("-m", "platform.doctor", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["torch"].startswith("2.13.0") and info["ray"] and info["mlflow"]
    r = run_python("-c", "import platform; print(platform.__file__); print(platform.system())", env=env, cwd=tmp_path)
    import platform as std_platform

    assert r.returncode == 0 and r.stdout.split() == [os.path.join(sysconfig.get_paths()["stdlib"], "platform.py"),
                                                      std_platform.system()]
    r = run_python("-m", "platform", env=env, cwd=tmp_path)  # the standard module's own command line
    assert r.returncode == 0 and r.stdout.strip() == std_platform.platform()
