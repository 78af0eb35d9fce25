"""The search record cannot lie: one driver per search, true statuses and exit codes, resume flags honoured or
refused, counters and overhead true across interruptions, one winner for the summary and promotion.

Real local Ray, real sqlite MLflow stores, the real CLIs as a user runs them; read-only and full file systems are
real tmpfs mounts in a private mount namespace of the search process (`unshare -m`, as root here and in CI).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import helpers
from helpers import REPO, env_for, runs_of, steps

pytestmark = pytest.mark.slow


def project(tmp_path: Path) -> Path:
    return tmp_path / "project"


def uri_of(tmp_path: Path) -> str:
    return f"sqlite:///{project(tmp_path) / 'mlflow.db'}"


def search_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "platform.search", *args, "--project-dir", str(project(tmp_path))]


def run(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd(tmp_path, *args), cwd=REPO, env=env_for(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=timeout)


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(search_cmd(tmp_path, *args), cwd=REPO, env=env_for(tmp_path / "cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_until_epoch(tmp_path: Path, proc: subprocess.Popen, experiment: str, trials_at: int, epoch: int,
                     timeout_s: float = 300) -> None:
    """Poll the store (only once the driver wrote its state file: its parent run, and so the store's tables,
    exist) until `trials_at` trial runs have logged at least `epoch` epochs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(1)
        if proc.poll() is not None:
            pytest.fail("search ended before it could be interrupted:\n" + proc.stdout.read()[-3000:])
        if list((project(tmp_path) / "ray_results").glob("*/dcell_search.json")):
            _, children = runs_of(uri_of(tmp_path), experiment)
            if sum(len(steps(uri_of(tmp_path), c.info.run_id)) >= epoch for c in children) >= trials_at:
                return
    pytest.fail(f"{trials_at} trial(s) did not reach epoch {epoch} in {timeout_s} s")


def interrupt(proc: subprocess.Popen, sig: signal.Signals) -> str:
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=180)
    if sig == signal.SIGKILL:  # the local Ray processes lost their driver; end them as a crash would
        os.killpg(proc.pid, signal.SIGKILL)
    return out


def search_name(tmp_path: Path) -> str:
    (state,) = (project(tmp_path) / "ray_results").glob("*/dcell_search.json")
    return json.loads(state.read_text())["name"]


def last_progress(output: str) -> str:
    lines = [line for line in output.splitlines() if "trials of" in line]
    assert lines, output[-3000:]
    return lines[-1]


def winner_run_id(output: str) -> str:
    found = re.search(r"^winner: trial \S+ \(run ([0-9a-f]{32})", output, re.MULTILINE)
    assert found, output[-3000:]
    return found.group(1)


def in_mount_namespace(tmpfs: Path, options: str, cmd: list[str]) -> list[str]:
    """cmd run with a tmpfs (mount options `options`) at tmpfs, visible only to that process tree."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    script = f'mount -t tmpfs -o {options} tmpfs "$1" && shift && exec "$@"'
    user_ns = [] if os.geteuid() == 0 else ["-r"]  # without root: a user namespace grants the mount
    return ["unshare", *user_ns, "-m", "sh", "-c", script, "sh", str(tmpfs), *cmd]


# ---- one owner, promotion of a running search, the winner -------------------------------------------------------
def test_second_driver_and_promotion_refused_while_running_then_one_winner(tmp_path):
    f = helpers.search_file(tmp_path, "owned", 12, {"train.lr": {"grid": [0.01, 0.003]}},
                            overrides=["data.genotypes.num_doubles=4000"])
    first = start(tmp_path, str(f))
    wait_until_epoch(tmp_path, first, "owned", trials_at=1, epoch=1)
    name = search_name(tmp_path)

    second = run(tmp_path, str(f), "--resume", "--name", name, timeout=120)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and "another driver" in second.stderr
    promote = helpers.run_python("-m", "platform.promote", name, "--project-dir", str(project(tmp_path)),
                                 env=env_for(tmp_path / "cache"), timeout=120)
    assert promote.returncode == 1 and "still RUNNING" in promote.stderr, promote.stdout + promote.stderr
    assert "--allow-running" in promote.stderr

    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    parents, children = runs_of(uri_of(tmp_path), "owned")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all(c.data.tags["dcell.epoch_budget"] == "12" for c in children)
    assert "dcell.owner" in parents[0].data.tags and not (project(tmp_path) / "ray_results" / name /
                                                          "dcell_search.lease").exists()
    summary_winner = winner_run_id(out)
    promote = helpers.run_python("-m", "platform.promote", name, "--project-dir", str(project(tmp_path)),
                                 env=env_for(tmp_path / "cache"), timeout=300)
    assert promote.returncode == 0, promote.stdout + promote.stderr
    assert f"winner: run {summary_winner}" in promote.stdout


def test_searched_epochs_winner_is_the_same_for_summary_and_promotion(tmp_path):
    """train.epochs searched: a trial with a 1-epoch budget that ends at epoch 1 FINISHED; one with 3 epochs that ASHA
    stops at epoch 1 is stopped early (its budget, not the base train.epochs, decides); the winner is the best
    FINISHED trial, in the summary and in promotion alike."""
    f = helpers.search_file(tmp_path, "epochs", 2, {"train.epochs": {"grid": [3, 1]}, "train.lr": {"grid": [0.01, 1e-6]}},
                            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 3})
    spec = yaml.safe_load(f.read_text())  # the base train.epochs=2 stays out: the key is searched
    spec["overrides"] = [o for o in spec["overrides"] if not o.startswith("train.epochs=")]
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = run(tmp_path, str(f), "--max-failures", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, children = runs_of(uri_of(tmp_path), "epochs")
    by = {(c.data.params["train.epochs"], c.data.params["train.lr"]): c for c in children}
    assert len(by) == 4
    for (epochs, lr), c in by.items():
        last = len(steps(uri_of(tmp_path), c.info.run_id))
        assert c.data.tags["dcell.epoch_budget"] == epochs
        if c.info.status == "FINISHED":
            assert last == int(epochs), (epochs, lr, last)
        else:
            assert (c.info.status, c.data.tags.get("dcell.stopped_early")) == ("KILLED", "true") and last < int(epochs)
    summary_winner = winner_run_id(r.stdout)
    finished = [c for c in children if c.info.status == "FINISHED"]
    best = max(finished, key=lambda c: c.data.metrics["val/pearson"])
    assert summary_winner == best.info.run_id
    promote = helpers.run_python("-m", "platform.promote", "epochs", "--project-dir", str(project(tmp_path)),
                                 env=env_for(tmp_path / "cache"), timeout=300)
    assert promote.returncode == 0 and f"winner: run {summary_winner}" in promote.stdout, promote.stdout + promote.stderr


# ---- exit codes and parent statuses ------------------------------------------------------------------------------
def test_all_trials_failed_exits_1_and_the_parent_says_why(tmp_path):
    f = helpers.search_file(tmp_path, "allnan", 2, {"loss.alpha": {"grid": [1.0e38, 2.0e38]}}, max_concurrent=2)
    r = run(tmp_path, str(f))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    parents, children = runs_of(uri_of(tmp_path), "allnan")
    (parent,) = parents
    assert parent.info.status == "FAILED" and parent.data.tags["dcell.outcome"] == "completed"
    assert parent.data.tags["dcell.error"] == "no trial has a score: 2 failed"
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert "no winner" in r.stdout and "2 failed" in last_progress(r.stdout)
    # a quiet console: the platform's lines only (python -m platform.search --verbose shows the libraries' own)
    for noise in ("Started a local Ray instance", "Token authentication", "Configuration for experiment",
                  "TensorBoard", "A new study created", "Creating initial MLflow database", "View detailed results"):
        assert noise not in r.stdout + r.stderr, noise


def test_read_only_project_directory_is_refused_before_any_run(tmp_path):
    ro, store = tmp_path / "ro", tmp_path / "store"
    ro.mkdir()
    store.mkdir()
    f = helpers.search_file(tmp_path, "ro", 1, {"train.lr": {"grid": [0.01]}})
    cmd = [sys.executable, "-m", "platform.search", str(f), "--project-dir", str(ro / "project"),
           "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
    started = time.time()
    r = subprocess.run(in_mount_namespace(ro, "ro,size=1m", cmd), cwd=REPO, env=env_for(tmp_path / "cache"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"the project directory {ro / 'project'} is not writable: Read-only file system" in r.stderr
    assert not (store / "mlflow.db").exists()  # nothing was recorded: the store was not even opened
    assert time.time() - started < 60


def test_unwritable_sqlite_store_fails_in_seconds(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    f = helpers.search_file(tmp_path, "rostore", 1, {"train.lr": {"grid": [0.01]}})
    cmd = [sys.executable, "-m", "platform.search", str(f), "--project-dir", str(project(tmp_path)),
           "--tracking-uri", f"sqlite:///{ro / 'mlflow.db'}"]
    started = time.time()
    r = subprocess.run(in_mount_namespace(ro, "ro,size=1m", cmd), cwd=REPO, env=env_for(tmp_path / "cache"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"MLflow tracking store sqlite:///{ro / 'mlflow.db'} is not writable" in r.stderr
    assert time.time() - started < 60 and not (project(tmp_path) / "ray_results").exists()


def test_full_disk_leaves_no_running_parent(tmp_path):
    """The project directory (Tune's state, trial checkpoints, artifacts) on a 1 MiB tmpfs fills up during the
    first epoch's checkpoint; the tracking store lives elsewhere. The search ends with a true status, exit 1."""
    small, store = tmp_path / "small", tmp_path / "store"
    small.mkdir()
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    f = helpers.search_file(tmp_path, "full", 3, {"train.lr": {"grid": [0.01, 0.003]}})
    cmd = [sys.executable, "-m", "platform.search", str(f), "--project-dir", str(small / "project"),
           "--tracking-uri", uri, "--max-failures", "0"]
    r = subprocess.run(in_mount_namespace(small, "size=1m", cmd), cwd=REPO, env=env_for(tmp_path / "cache"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    parents, children = runs_of(uri, "full")
    (parent,) = parents
    assert parent.info.status == "FAILED", (parent.info.status, parent.data.tags)
    assert "No space left on device" in r.stdout + r.stderr
    assert all(c.info.status != "RUNNING" for c in children)


def test_two_searches_create_one_new_sqlite_store_at_once(tmp_path):
    fa = helpers.search_file(tmp_path, "twin_a", 1, {"train.lr": {"grid": [0.01]}})
    fb = helpers.search_file(tmp_path, "twin_b", 1, {"train.lr": {"grid": [0.003]}})
    procs = [start(tmp_path, str(f)) for f in (fa, fb)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    for name in ("twin_a", "twin_b"):
        parents, children = runs_of(uri_of(tmp_path), name)
        assert [p.info.status for p in parents] == ["FINISHED"] and [c.info.status for c in children] == ["FINISHED"]


# ---- resume: flags, counters, overhead, a finished search ----------------------------------------------------
def test_resume_refuses_flags_it_cannot_honour_and_honours_failures_and_concurrency(tmp_path):
    # Grid order: (lr 0.01, min_genes 6) trains 8 epochs; (0.01, 400) fails (no term keeps 400 genes), which Tune
    # retries max_failures times. Stopped (SIGTERM) during the first trial, resumed with --max-failures 0 and
    # --max-concurrent 2: the failing trial gets one attempt, and it runs while the first trial still trains.
    f = helpers.search_file(tmp_path, "flags", 8, {"train.lr": {"grid": [0.01]},
                                                   "data.ontology.min_genes": {"grid": [6, 400]}})
    proc = start(tmp_path, str(f))
    wait_until_epoch(tmp_path, proc, "flags", trials_at=1, epoch=1)
    out = interrupt(proc, signal.SIGTERM)  # a scheduler's stop: handled as Ctrl-C
    assert proc.returncode == 1, out[-3000:]
    name = search_name(tmp_path)
    hint = out[out.index("continue it with:"):].splitlines()[1].strip()
    assert hint.startswith(f"cd {REPO} && ") and f"--name {name}" in hint and str(project(tmp_path)) in hint
    parents, _ = runs_of(uri_of(tmp_path), "flags")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["dcell.outcome"] == "interrupted"

    r = run(tmp_path, str(f), "--resume", "--name", name, "--num-samples", "3", timeout=120)
    assert r.returncode == 2 and "--num-samples 3 cannot change a started search; it keeps num_samples=1" in r.stderr
    r = run(tmp_path, str(f), "--resume", "--name", name, "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}",
            timeout=120)
    assert r.returncode == 2 and "is not the store this search records to" in r.stderr and uri_of(tmp_path) in r.stderr

    env = env_for(tmp_path / "cache")
    resumed = subprocess.run(["bash", "-c", hint.replace("--resume", "--resume --max-failures 0 --max-concurrent 2")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]  # completed with a winner
    _, children = runs_of(uri_of(tmp_path), "flags")
    by = {c.data.params["data.ontology.min_genes"]: c for c in children}
    good, bad = by["6"], by["400"]
    assert bad.info.status == "FAILED" and len(bad.data.tags["dcell.ray_nodes"].split(",")) == 1
    assert "dcell.retries" not in bad.data.tags
    assert bad.info.start_time < good.info.end_time  # both ran at once: the new concurrency limit
    assert good.info.status == "FINISHED" and steps(uri_of(tmp_path), good.info.run_id) == list(range(1, 9))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_counters_and_overhead_stay_true_across_a_resume(tmp_path, sig):
    """Three 4-epoch trials one at a time; the driver is interrupted during the second, after the first ended.
    After --resume the counters still hold the first trial, overhead is never negative, and a resume of the
    finished search says so and changes nothing."""
    exp = f"count{sig.name.lower()}"
    f = helpers.search_file(tmp_path, exp, 4, {"train.lr": {"grid": [0.01, 0.005, 0.003]}})
    proc = start(tmp_path, str(f))
    wait_until_epoch(tmp_path, proc, exp, trials_at=2, epoch=1)
    interrupt(proc, sig)
    time.sleep(2)  # the driver's downtime: must not count as trial time
    r = run(tmp_path, str(f), "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert last_progress(r.stdout).split("] ", 1)[1].startswith(
        "trials of 3: 0 running, 3 finished, 0 stopped early, 0 failed, 0 interrupted, 0 pending")
    client = MlflowClient(tracking_uri=uri_of(tmp_path))
    (parent,), children = runs_of(uri_of(tmp_path), exp)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(steps(uri_of(tmp_path), c.info.run_id) == [1, 2, 3, 4] for c in children)
    overhead = client.get_metric_history(parent.info.run_id, "overhead_s")
    wall = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "search_wall_s")}
    trial_s = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "trial_s_sum")}
    assert [m.step for m in overhead] == ([1, 2] if sig == signal.SIGINT else [2])  # a killed driver logs nothing
    assert all(m.value >= 0 for m in overhead), overhead
    assert trial_s[2] <= wall[2]  # one slot: the resumed trials ran inside this invocation's wall time

    again = run(tmp_path, str(f), "--resume")
    assert again.returncode == 0 and "already completed" in again.stdout and "nothing changed" in again.stdout
    after = client.get_run(parent.info.run_id)
    assert (after.info.status, after.info.end_time, after.data.metrics, after.data.tags) == (
        parent.info.status, parent.info.end_time, parent.data.metrics, parent.data.tags)
