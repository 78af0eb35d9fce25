"""The search driver: validate, check, take the search's lease, record a parent run, run Ray Tune (or resume it),
summarize, and close the parent run with its true status.

Layout under the project directory: `mlflow.db` + `mlartifacts/` (the embedded tracking store) and
`ray_results/<search run name>/` (Tune's experiment state, trial checkpoints, `dcell_search.json` with the
search's settings, `dcell_search.lease` while a driver runs it). On a cluster (`address`) the project directory
must be on storage every node shares, and the tracking URI an MLflow server every node reaches (checked by
dcell_core.search.cluster before anything is recorded; docs/cluster.md).

Exit codes (docs/searching.md): 0 the search completed and has a winner; 1 it completed without a winner, it was
interrupted (the resume command is printed), or it crashed (the parent run is FAILED with the reason); 2 usage or
input error, found before anything was recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcell_core.search import baselines, ledger, tracking

STATE_FILE = "dcell_search.json"
DEFAULT_MAX_FAILURES = 2  # Tune retries of a crashed trial, from its last checkpoint
EXIT_WINNER, EXIT_NO_WINNER, EXIT_USAGE = 0, 1, 2


class SearchUsageError(ValueError):
    """A command-line or search-file problem: reported in one message, exit status 2."""


@dataclass
class SearchRequest:
    file: Path
    overrides: list[str] = field(default_factory=list)
    num_samples: int | None = None
    max_concurrent: int | None = None
    replicates: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    resume: bool = False
    project_dir: Path = field(default_factory=Path.cwd)
    max_failures: int | None = None  # None: the search's own (DEFAULT_MAX_FAILURES for a new one)
    log_checkpoints: bool = True
    verbose: bool = False
    stream: object = sys.stdout


@dataclass
class SearchOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    outcome: str  # one of ledger.OUTCOMES; "completed" also for a finished search that was resumed
    winner: ledger.TrialRecord | None
    summary: dict
    tracking_uri: str
    storage: Path

    @property
    def complete(self) -> bool:
        return self.outcome == "completed"

    @property
    def exit_code(self) -> int:
        return EXIT_WINNER if self.complete and self.winner is not None else EXIT_NO_WINNER


def run_search(req: SearchRequest) -> SearchOutcome:
    from dcell_core.search.console import quiet_console
    from dcell_core.search.lease import Lease
    from dcell_core.search.preflight import NotWritable, check_writable
    from dcell_core.search.space import SearchSpaceError, load_search_space

    out = req.stream
    quiet_console(req.verbose)
    project = Path(req.project_dir).resolve()
    storage = project / "ray_results"
    state = _resume_state(req, storage) if req.resume else None
    overrides = list(state["cli_overrides"]) if state else list(req.overrides)
    try:
        space = load_search_space(req.file, overrides, num_samples=None if state else req.num_samples,
                                  max_concurrent=None if state else req.max_concurrent,
                                  replicates=state.get("replicates") if state else req.replicates)
    except SearchSpaceError as e:
        raise SearchUsageError(str(e)) from e
    for note in space.notes:  # what the loader decided (e.g. an exact grid)
        print(f"{req.file}: {note}", file=out, flush=True)
    file_hash = hashlib.sha256(Path(req.file).read_bytes()).hexdigest()
    if state:
        _check_resume(req, state, file_hash)
    settings = {
        "num_samples": state["num_samples"] if state else space.search.num_samples,
        "replicates": space.replicates,
        "max_concurrent": req.max_concurrent or (state["max_concurrent"] if state else space.search.max_concurrent),
        "max_failures": (req.max_failures if req.max_failures is not None
                         else state.get("max_failures", DEFAULT_MAX_FAILURES) if state else DEFAULT_MAX_FAILURES),
    }
    if settings["max_failures"] < 0:
        raise SearchUsageError(f"--max-failures must be >= 0, got {settings['max_failures']}")
    recorded = state["tracking_uri"] if state else None  # a resume may name a new address of the same store
    tracking_uri = req.tracking_uri or recorded or tracking.default_tracking_uri(project)
    name = state["name"] if state else (req.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    exp_dir = storage / name
    if not state and exp_dir.exists():
        raise SearchUsageError(f"a search named {name} already exists in {exp_dir}: continue it with --resume --name "
                               f"{name}, or choose another --name")
    local_store = tracking.is_local_store(tracking_uri)
    cache = _cache_dir()
    try:  # every directory this search writes to, before anything is recorded
        check_writable(project, "the project directory")
        check_writable(storage, "Ray Tune's results directory")
        if local_store:
            check_writable(tracking.default_artifact_root(project), "the MLflow artifact root")
        check_writable(Path(cache), "the cache directory ($DCELL_CACHE_DIR)")
    except NotWritable as e:
        raise SearchUsageError(str(e)) from e
    client = None
    if state:  # the store exists since the search started: opening it creates nothing
        client = tracking.check_reachable(tracking_uri)
        parent = _resumed_parent(client, tracking_uri, state)
        if parent.data.tags.get(ledger.TAG_OUTCOME) == "completed":
            return _already_completed(client, state, space, parent, tracking_uri, exp_dir, out)
    lease = Lease(exp_dir)  # taken once the tracking store and the cluster passed their checks
    try:
        return _run_owned(req, space, state, settings, name, exp_dir, file_hash, overrides, tracking_uri, client,
                          lease, project, cache)
    finally:
        lease.release()
        if lease.renew_error:
            print(f"warning: the search's lease could not always be renewed ({lease.renew_error}); another driver "
                  "may have taken the search over", file=sys.stderr)


def _run_owned(req, space, state, settings, name, exp_dir, file_hash, overrides, tracking_uri, client, lease,
               project, cache: str) -> SearchOutcome:
    import ray

    from dcell_core.search import cluster
    from dcell_core.search.lease import SearchOwned, describe
    from dcell_core.search.space import format_override_value

    out = req.stream
    if req.address:  # the cluster's tracking checks need its nodes: connect before anything is recorded
        cluster.connect(req.address, req.verbose)
        sigterm_as_interrupt()
    try:
        cluster.check_tracking(req.address, tracking_uri, space.resources.cpu, space.resources.gpu)
        if client is None:  # a new search: the store is opened (a sqlite file created) only once the cluster fits
            client = tracking.check_reachable(tracking_uri)
        try:
            owner = lease.acquire()
        except SearchOwned as e:
            raise SearchUsageError(str(e)) from e
        if not req.address:  # a local Ray starts only once the tracking store answered
            cluster.connect(None, req.verbose)
            sigterm_as_interrupt()

        from dcell_core.config import compose
        from dcell_core.data import load_run_data

        base_overrides = [*space.overrides, f"cache_dir={format_override_value(cache)}",
                          f"base_dir={format_override_value(str(project))}"]
        base_cfg = compose(base_overrides)
        data = load_run_data(base_cfg)  # builds the shared caches once, before trials race for them
        artifact_root = tracking.default_artifact_root(project) if tracking.is_local_store(tracking_uri) else None
        exp_id = tracking.experiment_id(client, space.name, artifact_root)
        if state:
            parent_run_id = state["parent_run_id"]
            ledger.reopen_parent(client, parent_run_id, describe(owner))
            invocation = int(state.get("invocations", 1)) + 1
        else:
            parent_run_id = _start_parent_run(client, exp_id, name, req, space, file_hash, base_cfg, data, overrides,
                                              settings, describe(owner))
            baselines.fit_and_log(client, parent_run_id, data.dataset)
            invocation = 1
    except BaseException:
        ray.shutdown()
        raise
    state_path = exp_dir / STATE_FILE
    _write_state(state_path, {"name": name, "file": str(Path(req.file).resolve()), "file_sha256": file_hash,
                              "cli_overrides": overrides, **settings, "tracking_uri": tracking_uri,
                              "experiment_id": exp_id, "parent_run_id": parent_run_id, "invocations": invocation})
    total = expected_trials(space, settings["num_samples"])
    print(f"search {name}: {total} trials of {space.name} ({req.file}), {settings['max_concurrent']} at a time"
          f"{f' (resumed, run {invocation})' if state else ''}; MLflow experiment {space.name}, parent run "
          f"{parent_run_id}", file=out, flush=True)

    since_ms = int(time.time() * 1000)
    try:
        started = time.perf_counter()
        try:
            complete = _fit(req, space, exp_dir, state is not None, tracking_uri, exp_id, parent_run_id,
                            base_overrides, settings, state_path)
        finally:
            ray.shutdown()
        wall_s = time.perf_counter() - started
        outcome = "completed" if complete else "interrupted"
        if not complete:
            ledger.interrupt_trials(client, exp_id, parent_run_id)
        records = ledger.trial_records(client, exp_id, parent_run_id, space.metric)
        summary = _finish(client, parent_run_id, space, records, exp_dir, out)
        summary.update(_overhead(client, parent_run_id, records, since_ms, wall_s, settings["max_concurrent"],
                                 invocation, out))
        winner = ledger.winner(records, space.mode)
        reason = None
        if complete and winner is None:
            reason = f"no trial has a score: {_describe(ledger.counts(records))}"
    except KeyboardInterrupt:
        outcome, reason = "interrupted", None
        ledger.interrupt_trials(client, exp_id, parent_run_id)
        raise
    except BaseException as e:
        outcome, reason = "crashed", f"{type(e).__name__}: {e}"
        print(f"\nerror: search {name} crashed ({reason})", file=sys.stderr, flush=True)
        ledger.interrupt_trials(client, exp_id, parent_run_id)
        raise
    finally:
        status = ledger.close_parent(client, parent_run_id, outcome, reason)
        print(f"\nparent run {parent_run_id}: {status}" + (f" ({reason})" if reason else ""), file=out, flush=True)
        if outcome != "completed":
            print(f"the search stopped before all trials ended; continue it with:\n  "
                  f"{resume_command(req, name, project)}", file=out, flush=True)
        _print_ui(tracking_uri, project, exp_id, out)
    return SearchOutcome(name, exp_id, parent_run_id, outcome, winner, summary, tracking_uri, exp_dir)


def _fit(req, space, exp_dir: Path, resuming: bool, tracking_uri: str, exp_id: str, parent_run_id: str,
         base_overrides: list[str], settings: dict, state_path: Path) -> bool:
    from ray import tune

    from dcell_core.search.progress import SearchProgress
    from dcell_core.search.space import make_scheduler, make_search_alg, to_tune_param_space
    from dcell_core.search.trial import TrialContext, dcell_trial, trial_dirname

    ctx = TrialContext(tracking_uri=tracking_uri, experiment_id=exp_id, parent_run_id=parent_run_id,
                       overrides=tuple(base_overrides), search_seed=space.search.seed, metric=space.metric,
                       mode=space.mode, log_checkpoints=req.log_checkpoints, tags={ledger.TAG_SEARCH: exp_dir.name},
                       replicates=space.replicates, replicate_split=space.replicate_split)
    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(dcell_trial, ctx=ctx), resources)
    total = expected_trials(space, settings["num_samples"])
    param_space = to_tune_param_space(space)
    if resuming:
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, param_space=param_space)
    else:
        progress = SearchProgress(tracking_uri, exp_id, parent_run_id, space.metric, space.mode, total, state_path,
                                  stream=req.stream)
        run_config = tune.RunConfig(
            name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=0, callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=settings["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
            search_alg=make_search_alg(space, settings["max_concurrent"], state_path),
            scheduler=make_scheduler(space), num_samples=settings["num_samples"], trial_dirname_creator=trial_dirname,
            # A finished trial's worker process runs the next trial: no new Python process importing torch, Ray
            # and MLflow per trial (3-5 s each on 2 busy cores), and the datasets stay loaded. Every trial sets
            # its own seed, threads and MLflow run, so nothing carries over between them.
            reuse_actors=True))
    results = tuner.fit()
    return len(results) == total and results.num_terminated + results.num_errors == total


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's or a container's stop) handled as Ctrl-C: Tune ends the run cleanly and the parent
    run is closed as interrupted. Set again after ray.init, which installs its own SIGTERM handler (it exits the
    driver at once, leaving the parent to be recorded as crashed)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def expected_trials(space, num_samples: int) -> int:
    """Trials a search makes: num_samples, times the size of the grid when parameters are grids (Tune repeats
    the whole grid num_samples times)."""
    grid = 1
    for p in space.parameters:
        if p.kind == "grid":
            grid *= len(p.values)
    return grid * num_samples


def _start_parent_run(client, exp_id, name, req, space, file_hash, base_cfg, data, overrides, settings,
                      owner: str) -> str:
    from omegaconf import OmegaConf

    tags = {ledger.TAG_SEARCH_FILE: str(req.file), ledger.TAG_SEARCH_FILE_SHA: file_hash,
            ledger.TAG_GIT_COMMIT: _git_commit(), ledger.TAG_FINGERPRINT: data.hierarchy.fingerprint,
            ledger.TAG_RAY_ADDRESS: req.address or "local", ledger.TAG_OVERRIDES: " ".join(overrides),
            ledger.TAG_NOTE: space.description, ledger.TAG_OWNER: owner}
    params = {"metric": space.metric, "mode": space.mode, "num_samples": settings["num_samples"],
              "max_concurrent": settings["max_concurrent"], "algorithm": space.search.algorithm,
              "scheduler": space.scheduler.type, "data": base_cfg.data.name, "terms": data.hierarchy.num_terms,
              "genes": data.hierarchy.num_genes}
    run_id = ledger.open_parent(client, exp_id, name, tags, params)
    client.log_text(run_id, Path(req.file).read_text(), "search_space.yaml")
    client.log_text(run_id, OmegaConf.to_yaml(base_cfg), "base_config.yaml")
    return run_id


def _finish(client, parent_run_id: str, space, records: list, exp_dir: Path, out) -> dict:
    from dcell_core.search.reporting.stats import RELIABLE_TRIALS
    from dcell_core.search.summary import print_table, trials_table, write_parent_artifacts

    params = [p.key for p in space.parameters]
    table = trials_table(records, params, space.metric, space.mode)
    imp = write_parent_artifacts(client, parent_run_id, table, space.parameters, space.metric, space.mode,
                                 exp_dir / "summary")
    print(f"\ntrials by {space.metric} at their last epoch ({space.mode}; only trials that ran their full budget "
          "compete):", file=out)
    print_table(table, space.metric, top=10, stream=out)
    if "importances" in imp:
        print(f"parameter importances (fANOVA over {imp['scored_trials']} scored trials"
              f"{'' if imp['reliable'] else ', unreliable below ' + str(RELIABLE_TRIALS)}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in imp["importances"].items()), file=out)
    else:
        print(f"parameter importances not computed: {imp['not_computed']}", file=out)
    counts = ledger.counts(records)
    winner = ledger.winner(records, space.mode)
    if winner is not None:
        print(f"winner: trial {winner.trial_id} (run {winner.run_id}, {winner.run.info.run_name}), {space.metric} "
              f"{winner.score:.6g} at epoch {winner.epochs}", file=out)
    else:
        print(f"no winner: no trial ran its full budget with a finite {space.metric} ({_describe(counts)})", file=out)
    fitted = baselines.read(client.get_run(parent_run_id))
    if fitted:
        print(baselines.describe(fitted, space.metric), file=out)
    from dcell_core.search import report

    path = report.write_and_log(client, parent_run_id, space.metric, space.mode, space.parameters,
                                exp_dir / "summary" / report.REPORT_FILE)
    print(f"report: {path} (and the parent run's artifact {report.REPORT_FILE})", file=out)
    numbers = {"trials": len(records), **{f"trials_{k.replace(' ', '_')}": v for k, v in counts.items()},
               f"winner/{space.metric}": winner.score if winner is not None else float("nan")}
    tracking.log_metrics(client, parent_run_id, numbers, step=0)
    return {**numbers, **imp}


def _describe(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials"


def _overhead(client, parent_run_id: str, records: list, since_ms: int, wall_s: float, slots: int, invocation: int,
              out) -> dict:
    """This invocation's wall time against the time its trials' attempts ran, spread over the slots. Attempts
    that started before this invocation (before an interruption) are not counted, so a driver's downtime is
    never trial time."""
    trial_s = ledger.attempt_seconds(client, records, since_ms)
    ideal_s = trial_s / slots
    numbers = {ledger.SEARCH_WALL_S: wall_s, ledger.TRIAL_S_SUM: trial_s, ledger.OVERHEAD_S: wall_s - ideal_s}
    tracking.log_metrics(client, parent_run_id, numbers, step=invocation)
    print(f"time: search {wall_s:.1f} s; trials {trial_s:.1f} s in all over {slots} slots = {ideal_s:.1f} s; "
          f"platform overhead {wall_s - ideal_s:.1f} s", file=out)
    return numbers


def _already_completed(client, state, space, parent, tracking_uri, exp_dir, out) -> SearchOutcome:
    records = ledger.trial_records(client, state["experiment_id"], parent.info.run_id, space.metric)
    winner = ledger.winner(records, space.mode)
    said = (f"winner: trial {winner.trial_id} (run {winner.run_id}), {space.metric} {winner.score:.6g}"
            if winner is not None else f"no winner ({_describe(ledger.counts(records))})")
    print(f"search {state['name']} already completed (parent run {parent.info.run_id}, {parent.info.status}); "
          f"nothing to resume, nothing changed. {said}", file=out, flush=True)
    return SearchOutcome(state["name"], state["experiment_id"], parent.info.run_id, "completed", winner, {},
                         tracking_uri, exp_dir)


def resume_command(req, name: str, project: Path) -> str:
    """The command that continues this search, runnable as printed (from any directory)."""
    python = sys.executable
    cmd = [python, "-m", "platform.search", str(Path(req.file).resolve()), "--resume", "--name", name,
           "--project-dir", str(project)]
    if req.address:
        cmd += ["--address", req.address]
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join(cmd)}"


def _print_ui(tracking_uri: str, project: Path, experiment_id: str, out) -> None:
    """Where to see the search: the runs table of its experiment, in the UI of its MLflow server, or for a local
    store in the UI that `python -m platform.ui` (or `mlflow ui`) serves on 127.0.0.1:5000."""
    if not tracking.is_local_store(tracking_uri):
        print(f"MLflow UI: {tracking.runs_view_url(tracking_uri, experiment_id)}", file=out, flush=True)
        return
    ui = ("python -m platform.ui" if tracking_uri == tracking.default_tracking_uri(project)
          else f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    print(f"MLflow UI: {ui}   (then open {tracking.runs_view_url('http://127.0.0.1:5000', experiment_id)})",
          file=out, flush=True)


def _resume_state(req: SearchRequest, storage: Path) -> dict:
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
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SearchUsageError(f"--resume: the search state {path} is unreadable ({e})") from e


def _check_resume(req: SearchRequest, state: dict, file_hash: str) -> None:
    """A resumed search keeps what defines it; a flag that would change that is refused, naming what it keeps."""
    if state["file_sha256"] != file_hash:
        raise SearchUsageError(f"{req.file} changed since the search {state['name']} started; resuming it would "
                               "mix two searches (start a new one without --resume)")
    if req.overrides and list(req.overrides) != list(state["cli_overrides"]):
        raise SearchUsageError(f"--resume continues the search with its own overrides {state['cli_overrides']}; "
                               f"got different ones: {req.overrides}")
    if req.num_samples is not None and req.num_samples != state["num_samples"]:
        raise SearchUsageError(f"--resume: --num-samples {req.num_samples} cannot change a started search; it keeps "
                               f"num_samples={state['num_samples']}")
    if req.replicates is not None and req.replicates != state.get("replicates", req.replicates):
        raise SearchUsageError(f"--resume: --replicates {req.replicates} cannot change a started search; it keeps "
                               f"replicates={state['replicates']}")


def _resumed_parent(client, tracking_uri: str, state: dict):
    """The search's parent run in the store at tracking_uri. A new --tracking-uri (the server moved, e.g. a new
    head node) is honoured only when it reaches the same store: the one that holds this search's parent run."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(state["parent_run_id"])
    except MlflowException:
        parent = None
    if parent is None or parent.data.tags.get(ledger.TAG_SEARCH) != state["name"]:
        raise SearchUsageError(f"--resume: the tracking store {tracking_uri} has no parent run {state['parent_run_id']} "
                               f"of search {state['name']}: it is not the store this search records to (it was "
                               f"{state['tracking_uri']})")
    return parent


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
