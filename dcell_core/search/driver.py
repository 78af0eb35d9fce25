"""The search driver: validate, record a parent run, run Ray Tune (or resume it), summarize.

Layout under the project directory: `mlflow.db` + `mlartifacts/` (the embedded tracking store) and
`ray_results/<search run name>/` (Tune's experiment state, trial checkpoints, `dcell_search.json`). On a cluster
(`address`) the project directory must be on storage every node shares, and the tracking URI an MLflow server
every node reaches (checked by dcell_core.search.cluster before anything is recorded; docs/cluster.md).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcell_core.search import tracking

STATE_FILE = "dcell_search.json"


class SearchUsageError(ValueError):
    """A command-line or search-file problem: reported in one message, exit status 2."""


@dataclass
class SearchRequest:
    file: Path
    overrides: list[str] = field(default_factory=list)
    num_samples: int | None = None
    max_concurrent: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    resume: bool = False
    project_dir: Path = field(default_factory=Path.cwd)
    max_failures: int = 2  # Tune retries of a crashed trial, from its last checkpoint
    log_checkpoints: bool = True
    stream: object = sys.stdout


@dataclass
class SearchOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    complete: bool
    summary: dict
    tracking_uri: str
    storage: Path


def run_search(req: SearchRequest) -> SearchOutcome:
    from dcell_core.search.space import SearchSpaceError, format_override_value, load_search_space

    out = req.stream
    project = req.project_dir.resolve()
    storage = project / "ray_results"
    state_path, state = _resume_state(req, storage) if req.resume else (None, None)
    overrides = list(state["cli_overrides"]) if state else list(req.overrides)
    if state and req.overrides and list(req.overrides) != overrides:
        raise SearchUsageError(f"--resume continues the search with its own overrides {overrides}; "
                               f"got different ones: {req.overrides}")
    try:
        space = load_search_space(req.file, overrides, num_samples=None if state else req.num_samples,
                                  max_concurrent=None if state else req.max_concurrent)
    except SearchSpaceError as e:
        raise SearchUsageError(str(e)) from e
    file_hash = hashlib.sha256(Path(req.file).read_bytes()).hexdigest()
    if state and state["file_sha256"] != file_hash:
        raise SearchUsageError(f"{req.file} changed since the search {state['name']} started; resuming it would "
                               "mix two searches (start a new one without --resume)")
    num_samples = state["num_samples"] if state else space.search.num_samples
    max_concurrent = state["max_concurrent"] if state else space.search.max_concurrent
    tracking_uri = (state["tracking_uri"] if state else req.tracking_uri) or tracking.default_tracking_uri(project)

    import ray

    from dcell_core.search import cluster

    if req.address:  # the cluster's tracking checks need its nodes: connect before anything is recorded
        cluster.connect(req.address)
    try:
        cluster.check_tracking(req.address, tracking_uri, space.resources.cpu, space.resources.gpu)
        client = tracking.check_reachable(tracking_uri)
        if not req.address:  # a local Ray starts only once the tracking store answered
            cluster.connect(None)

        from dcell_core.config import compose
        from dcell_core.data import load_run_data

        base_overrides = [*space.overrides, f"cache_dir={format_override_value(_cache_dir())}",
                          f"base_dir={format_override_value(str(project))}"]
        base_cfg = compose(base_overrides)
        data = load_run_data(base_cfg)  # builds the shared caches once, before trials race for them
        name = state["name"] if state else (req.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        artifact_root = tracking.default_artifact_root(project) if tracking.is_local_store(tracking_uri) else None
        exp_id = tracking.experiment_id(client, space.name, artifact_root)
        if state:
            parent_run_id = state["parent_run_id"]
            client.update_run(parent_run_id, status="RUNNING")
        else:
            parent_run_id = _start_parent_run(client, exp_id, name, req, space, file_hash, base_cfg, data, overrides,
                                              num_samples, max_concurrent)
            state_path = storage / name / STATE_FILE
            _write_state(state_path, {"name": name, "file": str(Path(req.file).resolve()), "file_sha256": file_hash,
                                      "cli_overrides": overrides, "num_samples": num_samples,
                                      "max_concurrent": max_concurrent, "tracking_uri": tracking_uri,
                                      "experiment_id": exp_id, "parent_run_id": parent_run_id})
        print(f"search {name}: {expected_trials(space, num_samples)} trials of {space.name} ({req.file}), {max_concurrent} at a time; "
              f"MLflow experiment {space.name}, parent run {parent_run_id}", file=out, flush=True)
        started = time.perf_counter()
        complete = _fit(req, space, storage, name, state is not None, tracking_uri, exp_id, parent_run_id,
                        base_overrides, int(base_cfg.train.epochs), num_samples, max_concurrent)
        wall_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    summary = _finish(client, exp_id, parent_run_id, space, storage / name, complete, out)
    summary.update(_overhead(client, exp_id, parent_run_id, wall_s, max_concurrent, out))
    _print_footer(req, name, tracking_uri, project, complete, out)
    return SearchOutcome(name, exp_id, parent_run_id, complete, summary, tracking_uri, storage / name)


def _fit(req, space, storage: Path, name: str, resuming: bool, tracking_uri: str, exp_id: str, parent_run_id: str,
         base_overrides: list[str], epochs: int, num_samples: int, max_concurrent: int) -> bool:
    from ray import tune

    from dcell_core.search.progress import SearchProgress
    from dcell_core.search.space import make_scheduler, make_search_alg, to_tune_param_space
    from dcell_core.search.trial import TrialContext, dcell_trial, trial_dirname

    ctx = TrialContext(tracking_uri=tracking_uri, experiment_id=exp_id, parent_run_id=parent_run_id,
                       overrides=tuple(base_overrides), search_seed=space.search.seed, epochs=epochs,
                       metric=space.metric, mode=space.mode, log_checkpoints=req.log_checkpoints,
                       tags={"dcell.search": name})
    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(dcell_trial, ctx=ctx), resources)
    progress = SearchProgress(tracking_uri, exp_id, parent_run_id, space.metric, space.mode, epochs,
                              expected_trials(space, num_samples), stream=req.stream)
    run_config = tune.RunConfig(
        name=name, storage_path=str(storage), verbose=0, callbacks=[progress],
        failure_config=tune.FailureConfig(max_failures=req.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    param_space = to_tune_param_space(space)
    if resuming:
        tuner = tune.Tuner.restore(str(storage / name), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, param_space=param_space)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
            search_alg=make_search_alg(space, max_concurrent), scheduler=make_scheduler(space),
            num_samples=num_samples, trial_dirname_creator=trial_dirname,
            # A finished trial's worker process runs the next trial: no new Python process importing torch, Ray
            # and MLflow per trial (3-5 s each on 2 busy cores), and the datasets stay loaded. Every trial sets
            # its own seed, threads and MLflow run, so nothing carries over between them.
            reuse_actors=True))
    results = tuner.fit()
    total = expected_trials(space, num_samples)
    return len(results) == total and results.num_terminated + results.num_errors == total


def expected_trials(space, num_samples: int) -> int:
    """Trials a search makes: num_samples, times the size of the grid when parameters are grids (Tune repeats
    the whole grid num_samples times)."""
    grid = 1
    for p in space.parameters:
        if p.kind == "grid":
            grid *= len(p.values)
    return grid * num_samples


def _start_parent_run(client, exp_id, name, req, space, file_hash, base_cfg, data, overrides, num_samples,
                      max_concurrent) -> str:
    from omegaconf import OmegaConf

    run = client.create_run(exp_id, run_name=name, tags={
        tracking.TAG_KIND: "search", "dcell.search": name, "dcell.search_file": str(req.file),
        "dcell.search_file_sha256": file_hash, "dcell.git_commit": _git_commit(),
        "dcell.data_fingerprint": data.hierarchy.fingerprint, "dcell.ray_address": req.address or "local",
        "dcell.overrides": " ".join(overrides), "mlflow.note.content": space.description})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[tracking.Param(k, str(v)) for k, v in {
        "metric": space.metric, "mode": space.mode, "num_samples": num_samples, "max_concurrent": max_concurrent,
        "algorithm": space.search.algorithm, "scheduler": space.scheduler.type, "data": base_cfg.data.name,
        "terms": data.hierarchy.num_terms, "genes": data.hierarchy.num_genes}.items()])
    client.log_text(run_id, Path(req.file).read_text(), "search_space.yaml")
    client.log_text(run_id, OmegaConf.to_yaml(base_cfg), "base_config.yaml")
    return run_id


def _finish(client, exp_id, parent_run_id, space, exp_dir: Path, complete: bool, out) -> dict:
    from dcell_core.search.summary import print_table, trials_table, write_parent_artifacts

    if not complete:
        for run in tracking.child_runs(client, exp_id, parent_run_id):
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")  # set back to RUNNING when the trial resumes
    params = [p.key for p in space.parameters]
    table = trials_table(client, exp_id, parent_run_id, params, space.metric, space.mode)
    summary = write_parent_artifacts(client, parent_run_id, table, params, space.metric, exp_dir / "summary")
    print(f"\nbest trials by {space.metric} ({space.mode}):", file=out)
    print_table(table, space.metric, top=10, stream=out)
    if "importances" in summary:
        print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()),
              file=out)
    else:
        print(f"parameter importances not computed: {summary['not_computed']}", file=out)
    client.set_terminated(parent_run_id, "FINISHED" if complete else "KILLED")
    return summary


def _overhead(client, exp_id: str, parent_run_id: str, wall_s: float, slots: int, out) -> dict:
    """Wall time of this invocation's Tune run against the trials' own run time spread over the slots."""
    runs = tracking.child_runs(client, exp_id, parent_run_id)
    trial_s = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time)
    ideal_s = trial_s / slots
    numbers = {"search_wall_s": wall_s, "trial_s_sum": trial_s, "overhead_s": wall_s - ideal_s}
    tracking.log_metrics(client, parent_run_id, numbers, step=0)
    print(f"time: search {wall_s:.1f} s; trials {trial_s:.1f} s in all over {slots} slots = {ideal_s:.1f} s; "
          f"platform overhead {wall_s - ideal_s:.1f} s", file=out)
    return numbers


def _print_footer(req, name, tracking_uri, project, complete, out) -> None:
    if not complete:
        print(f"\nthe search stopped before all trials ended; continue it with:\n  python -m platform.search "
              f"{req.file} --resume --name {name}", file=out)
    ui = ("python -m platform.ui" if tracking_uri == tracking.default_tracking_uri(project)
          else f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    print(f"\nMLflow UI: {ui}   (then open http://127.0.0.1:5000)", file=out, flush=True)


def _resume_state(req: SearchRequest, storage: Path) -> tuple[Path, dict]:
    if req.name:
        path = storage / req.name / STATE_FILE
    else:
        import yaml

        stem = yaml.safe_load(Path(req.file).read_text()).get("name")
        found = sorted(storage.glob(f"{stem}-*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SearchUsageError(f"--resume: no earlier search of {req.file} under {storage}")
        path = found[-1]
    if not path.exists():
        raise SearchUsageError(f"--resume: no search state {path}")
    return path, json.loads(path.read_text())


def _write_state(path: Path, state: dict) -> None:
    from dcell_core.fileio import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(state, indent=1).encode())


def _cache_dir() -> str:
    from dcell_core.config import cache_dir, compose

    return str(cache_dir(compose([])))


def _git_commit() -> str:
    """The commit of the code that runs the search (dcell_core's checkout), with '+dirty' for local changes."""
    code = Path(__file__).resolve().parents[2]
    r = subprocess.run(["git", "describe", "--always", "--dirty=+dirty", "--abbrev=40"], cwd=code,
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"
