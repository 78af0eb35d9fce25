"""The search record in MLflow, owned here: tag names, run statuses, the metrics a trial reports, a trial's score
and a search's winner. Every status written to a run of a search is written by a function of this module; the
driver, the trials, the progress lines, the summary and promotion read the record through it.

The record: one MLflow experiment per search-space name, one parent run per search (tag `dcell.kind=search`),
one child run per trial (`dcell.kind=trial`, `mlflow.parentRunId`, `dcell.trial_id`, found by tags, never by
creation order, so a retried or resumed trial writes to the run it already has).

Statuses (MLflow's):
- trial FINISHED: it completed its whole epoch budget (`dcell.epoch_budget`, its own `train.epochs`);
- trial KILLED with `dcell.stopped_early`: the scheduler (ASHA) stopped it before its budget;
- trial KILLED with `dcell.interrupted`: the driver stopped (Ctrl-C, crash); a resume sets it RUNNING again;
- trial FAILED: it raised (`dcell.error`), or its loss became non-finite (`dcell.nonfinite_loss`);
- parent FINISHED: every trial ended and there is a winner; FAILED: every trial ended without a winner
  (`dcell.error` says so), or the driver crashed (`dcell.error` names the exception); KILLED: interrupted.
  `dcell.outcome` is `completed`, `interrupted` or `crashed`.

The winner rule (docs/searching.md): a trial's score is the value of the search's metric at the last epoch it
completed; the winner is the trial with the best score among the FINISHED trials (those that ran their full
budget); equal scores go to the trial that started first. ASHA-stopped trials have a score but never win: their
checkpoints hold an early epoch.

Replicates (`replicates: k` in the search file, k > 1): a trial trains its configuration k times with its own
seeds, in lockstep, and its record holds the mean over its replicates under the normal metric names, so its score,
ASHA and the winner rule judge the mean at the last epoch. Each replicate's values are `replicate_metric(name, r)`;
the CI_LEVEL interval of the mean of the search's metric is `interval_metrics(metric)` (Student t over the k
values); `checkpoint/` and `plots/` hold replicate TAG_CHECKPOINT_REPLICATE's. A trial with k = 1 records exactly
what it did before replicates existed (none of these tags or metrics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from scipy import stats

from dcell_core.search import tracking
from dcell_core.train.metrics import TRAIN_METRICS

# ---- status values (MLflow's) ---------------------------------------------------------------------------------
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

# ---- tags -----------------------------------------------------------------------------------------------------
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_KIND = "dcell.kind"  # KIND_SEARCH (parent) or KIND_TRIAL (child)
KIND_SEARCH, KIND_TRIAL = "search", "trial"
TAG_SEARCH = "dcell.search"  # the search's name, on the parent and every child
TAG_TRIAL = "dcell.trial_id"  # Ray Tune's trial id
TAG_BUDGET = "dcell.epoch_budget"  # the trial's train.epochs
TAG_STOPPED = "dcell.stopped_early"
TAG_STOPPED_AT = "dcell.stopped_at_epoch"
TAG_INTERRUPTED = "dcell.interrupted"
TAG_ERROR = "dcell.error"
TAG_NONFINITE = "dcell.nonfinite_loss"
TAG_RETRIES = "dcell.retries"  # how often Tune restarted the trial after a crash
TAG_LAST_FAILURE = "dcell.last_failure"
TAG_NODE = "dcell.ray_node_id"  # the node of the trial's latest attempt
TAG_NODES = "dcell.ray_nodes"  # the nodes of all its attempts, in order, comma-separated
TAG_GPUS = "dcell.gpu_ids"
TAG_RESUMED = "dcell.resumed_from_epoch"  # set when an attempt continued from a checkpoint
TAG_OWNER = "dcell.owner"  # the parent's driver: host, pid and lease expiry (see lease.py)
TAG_OUTCOME = "dcell.outcome"  # parent: completed | interrupted | crashed
TAG_SEARCH_FILE, TAG_SEARCH_FILE_SHA = "dcell.search_file", "dcell.search_file_sha256"
TAG_GIT_COMMIT, TAG_FINGERPRINT = "dcell.git_commit", "dcell.data_fingerprint"
TAG_RAY_ADDRESS, TAG_OVERRIDES = "dcell.ray_address", "dcell.overrides"
OUTCOMES = ("completed", "interrupted", "crashed")
TAG_REPLICATES = "dcell.replicates"  # a trial's replicate count k, set when k > 1 (absent: 1)
TAG_REPLICATE_SEEDS = "dcell.replicate_seeds"  # their train.seed values, replicate 0 first, comma-separated
TAG_CHECKPOINT_REPLICATE = "dcell.checkpoint_replicate"  # the replicate whose weights checkpoint/ and plots/ hold

# ---- metrics --------------------------------------------------------------------------------------------------
# What a trial reports per epoch: the training loop's registry (declared next to the code that produces it).
TRIAL_METRICS: dict[str, str | None] = dict(TRAIN_METRICS)
# Seconds one attempt of a trial has run (logged at each epoch and when it ends, step = the attempt number):
# the platform's overhead is measured against these, so a driver's downtime is never counted as trial time.
ATTEMPT_S = "trial/attempt_s"
# Parent-run metrics, step = the invocation of the driver (1 for the first, 2 for the first resume, ...).
SEARCH_WALL_S, TRIAL_S_SUM, OVERHEAD_S = "search_wall_s", "trial_s_sum", "overhead_s"


def baseline_metric(kind: str, metric: str) -> str:
    """Parent-run metric of a per-gene baseline (search/baselines.py): `baseline/additive/val/pearson`."""
    return f"baseline/{kind}/{metric}"


# Replicates (k > 1): each replicate's value of a metric, and the interval of the mean of the search's metric.
CI_LEVEL = 0.95


def replicate_metric(metric: str, replicate: int) -> str:
    """The name under which replicate `replicate` (0-based) of a trial logs `metric`: `val/pearson/rep0`."""
    return f"{metric}/rep{replicate}"


def interval_metrics(metric: str) -> tuple[str, str]:
    """The names of the bounds of the CI_LEVEL interval of the mean of `metric` over a trial's replicates."""
    return f"{metric}/ci_low", f"{metric}/ci_high"


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the mean of replicate values and its CI_LEVEL two-sided Student-t interval, mean +-
    t(k - 1) x s / sqrt(k) with s the sample standard deviation. Bounds are NaN for one value; everything is NaN
    when a value is."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"mean_interval needs a non-empty list of values, got {values!r}")
    mean = float(a.mean())
    if len(a) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(a) - 1) * stats.sem(a))
    return mean, mean - half, mean + half


def metric_direction(metric: str) -> str | None:
    """'max', 'min' or None (a diagnostic); KeyError for a metric no trial reports."""
    return TRIAL_METRICS[metric]


# ---- writing statuses -----------------------------------------------------------------------------------------
def open_parent(client: MlflowClient, experiment_id: str, name: str, tags: dict, params: dict) -> str:
    """A new parent run (RUNNING) for the search `name`."""
    run = client.create_run(experiment_id, run_name=name, tags={TAG_KIND: KIND_SEARCH, TAG_SEARCH: name, **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def reopen_parent(client: MlflowClient, parent_run_id: str, owner: str) -> None:
    """A resumed search: its parent is RUNNING again under its new owner; the last outcome is cleared."""
    tags = client.get_run(parent_run_id).data.tags
    for key in (TAG_OUTCOME, TAG_ERROR):
        if key in tags:
            client.delete_tag(parent_run_id, key)
    tracking.set_tags(client, parent_run_id, {TAG_OWNER: owner})
    client.update_run(parent_run_id, status=RUNNING)


def close_parent(client: MlflowClient, parent_run_id: str, outcome: str, reason: str | None = None) -> str:
    """End the parent run with its true status (see the module docstring); returns the status."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    if outcome == "completed":
        status = FINISHED if reason is None else FAILED
    else:
        status = KILLED if outcome == "interrupted" else FAILED
    tags = {TAG_OUTCOME: outcome}
    if reason is not None:
        tags[TAG_ERROR] = reason
    tracking.set_tags(client, parent_run_id, tags)
    client.set_terminated(parent_run_id, status)
    return status


def set_owner(client: MlflowClient, parent_run_id: str, owner: str) -> None:
    tracking.set_tags(client, parent_run_id, {TAG_OWNER: owner})


def start_trial(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                params: dict, tags: dict) -> str:
    """The trial's run id: its existing run set back to RUNNING (a retry or a resumed search), or a new run."""
    run = find_trial(client, experiment_id, parent_run_id, trial_id)
    if run is None:
        run = client.create_run(experiment_id, run_name=run_name, tags={
            TAG_PARENT: parent_run_id, TAG_TRIAL: trial_id, TAG_KIND: KIND_TRIAL, **tags})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id
    if TAG_INTERRUPTED in run.data.tags:
        client.delete_tag(run.info.run_id, TAG_INTERRUPTED)
    client.update_run(run.info.run_id, status=RUNNING)
    return run.info.run_id


def set_budget(client: MlflowClient, run_id: str, epochs: int) -> None:
    """The trial's epoch budget (its composed train.epochs), set before it trains."""
    tracking.set_tags(client, run_id, {TAG_BUDGET: epochs})


def trial_finished(client: MlflowClient, run_id: str) -> None:
    """The trial completed its epoch budget."""
    client.set_terminated(run_id, FINISHED)


def trial_failed(client: MlflowClient, run_id: str, error: str, nonfinite: bool = False) -> None:
    tags = {TAG_ERROR: error}
    if nonfinite:
        tags[TAG_NONFINITE] = "true"
    tracking.set_tags(client, run_id, tags)
    client.set_terminated(run_id, FAILED)


def trial_ended_by_tune(client: MlflowClient, run, last_epoch: int) -> None:
    """Tune reports the trial complete while its run is still RUNNING: the trial's worker was stopped by the
    scheduler. FINISHED when that was at the end of its budget, else stopped early."""
    if run.info.status != RUNNING:
        return
    budget = budget_of(run)
    if budget is None:
        raise ValueError(f"trial run {run.info.run_id} ran without its {TAG_BUDGET} tag")
    if last_epoch >= budget:
        trial_finished(client, run.info.run_id)
        return
    tracking.set_tags(client, run.info.run_id, {TAG_STOPPED: "true", TAG_STOPPED_AT: last_epoch})
    client.set_terminated(run.info.run_id, KILLED)


def trial_errored(client: MlflowClient, run, error: str) -> None:
    """Tune gave up on the trial (its worker died before the trial could record its own failure)."""
    if run.info.status == RUNNING:
        trial_failed(client, run.info.run_id, error)


def trial_retried(client: MlflowClient, run, retries: int, error: str) -> None:
    """Tune restarts a crashed trial from its last checkpoint: the run stays RUNNING and records the attempt."""
    tracking.set_tags(client, run.info.run_id, {TAG_RETRIES: retries, TAG_LAST_FAILURE: error})


def interrupt_trials(client: MlflowClient, experiment_id: str, parent_run_id: str) -> int:
    """The driver stops: every RUNNING trial becomes KILLED with `dcell.interrupted` (RUNNING again when the
    search resumes). Returns how many."""
    n = 0
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.info.status == RUNNING:
            tracking.set_tags(client, run.info.run_id, {TAG_INTERRUPTED: "true"})
            client.set_terminated(run.info.run_id, KILLED)
            n += 1
    return n


# ---- reading the record ---------------------------------------------------------------------------------------
def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return list(client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                                   max_results=10000))


def find_trial(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and "
                                                             f"tags.`{TAG_TRIAL}` = '{trial_id}'", max_results=2)
    if len(runs) > 1:
        raise RuntimeError(f"two MLflow runs for trial {trial_id} of parent run {parent_run_id}")
    return runs[0] if runs else None


def budget_of(run) -> int | None:
    """The trial's epoch budget; None when it failed before its config was composed."""
    value = run.data.tags.get(TAG_BUDGET)
    return int(value) if value is not None else None


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the record holds it."""
    run: object = field(repr=False)  # mlflow Run
    trial_id: str
    status: str
    outcome: str  # running | finished | stopped early | failed | interrupted
    epochs: int  # the last epoch it completed (0: none)
    budget: int | None
    score: float  # the metric at its last completed epoch (NaN: none)
    eligible: bool  # FINISHED with a finite score: it competes for the winner
    # Replicates (see the module docstring): with k = 1, replicate_scores is (score,) and the bounds are NaN.
    replicates: int = 1  # k, the seeds its configuration was trained with; score is the mean over them
    replicate_scores: tuple[float, ...] = ()  # each replicate's metric at the last epoch, replicate 0 first
    ci_low: float = float("nan")  # the CI_LEVEL interval of the mean score at the last epoch (NaN: k = 1)
    ci_high: float = float("nan")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def outcome_of(run) -> str:
    status, tags = run.info.status, run.data.tags
    if status == RUNNING:
        return "running"
    if status == FINISHED:
        return "finished"
    if status == FAILED:
        return "failed"
    if status == KILLED:
        return "stopped early" if tags.get(TAG_STOPPED) == "true" else "interrupted"
    raise ValueError(f"trial run {run.info.run_id} has status {status}, which no code of this platform writes")


def trial_records(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str) -> list[TrialRecord]:
    records = []
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.data.tags.get(TAG_KIND) != KIND_TRIAL:
            continue
        metrics, nan = run.data.metrics, float("nan")
        score = float(metrics.get(metric, nan))
        status = run.info.status
        k = int(run.data.tags.get(TAG_REPLICATES, 1))
        reps = (score,) if k == 1 else tuple(float(metrics.get(replicate_metric(metric, r), nan)) for r in range(k))
        low, high = (float(metrics.get(name, nan)) for name in interval_metrics(metric))
        records.append(TrialRecord(run=run, trial_id=run.data.tags.get(TAG_TRIAL, ""), status=status,
                                   outcome=outcome_of(run), epochs=int(metrics.get("epoch", 0)),
                                   budget=budget_of(run), score=score,
                                   eligible=status == FINISHED and math.isfinite(score), replicates=k,
                                   replicate_scores=reps, ci_low=low, ci_high=high))
    return records


def _order_key(record: TrialRecord, mode: str):
    sign = -1.0 if mode == "max" else 1.0
    finite = math.isfinite(record.score)
    return (not record.eligible, not finite, sign * record.score if finite else 0.0, record.run.info.start_time,
            record.run_id)


def ranked(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Eligible trials by score (the first is the winner), then the others by score, unscored last."""
    return sorted(records, key=lambda r: _order_key(r, mode))


def winner(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    """The search's winner by the rule in the module docstring, or None when no trial is eligible."""
    first = ranked(records, mode)[:1]
    return first[0] if first and first[0].eligible else None


def counts(records: list[TrialRecord]) -> dict[str, int]:
    """Trials by outcome, in a fixed order."""
    out = {k: 0 for k in ("running", "finished", "stopped early", "failed", "interrupted")}
    for r in records:
        out[r.outcome] += 1
    return out


def attempt_seconds(client: MlflowClient, records: list[TrialRecord], since_ms: int) -> float:
    """Seconds the trials' attempts ran that started at or after `since_ms` (epoch milliseconds).

    Each attempt logs ATTEMPT_S (seconds since it started) at every epoch and when it ends, with its attempt number
    as step; an attempt's start is the time of its last entry less its value."""
    total = 0.0
    for r in records:
        last: dict[int, object] = {}
        for m in client.get_metric_history(r.run_id, ATTEMPT_S):
            if m.step not in last or m.value > last[m.step].value:
                last[m.step] = m
        total += sum(m.value for m in last.values() if m.timestamp - m.value * 1000 >= since_ms)
    return total
