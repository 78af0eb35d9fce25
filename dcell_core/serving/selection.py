"""Which trial of a search is promoted: the search's winner, by the one rule of dcell_core.search.ledger.

A search is named by its parent run id, by its name (the `dcell.search` tag, e.g. norms-20250101-120000), or by
its search-space name (the MLflow experiment; its latest parent run). Only a FINISHED search is promoted from
(its winner can no longer change), unless the caller allows an unfinished one. The winner is the FINISHED trial
with the best value of the metric at its last epoch (the epoch of the checkpoint it leaves); equal values go to
the trial that started first; the other trials are counted by outcome.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from dcell_core.search import ledger, tracking

RUN_ID = re.compile(r"[0-9a-f]{32}")
MODES = ("max", "min")


class PromotionError(ValueError):
    """Bad input to a promotion (unknown search, metric, store); the CLI prints it and exits 2."""


class NothingToPromote(RuntimeError):
    """The search has no run that can be promoted, or is not finished; the CLI prints it and exits 1."""


@dataclass(frozen=True)
class Winner:
    run: object = field(repr=False)  # mlflow Run
    value: float
    metric: str
    mode: str
    counts: dict  # trials, scored (FINISHED with the metric), and the ledger's count of each outcome

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def tracking_uri_for(tracking_uri: str | None, project_dir: Path) -> str:
    return tracking_uri or tracking.default_tracking_uri(Path(project_dir).resolve())


def open_store(uri: str) -> MlflowClient:
    """A client for an existing store: a sqlite file that is not there is an error (never created empty)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise PromotionError(f"no MLflow store at {db}: run a search first (python -m platform.search ...), "
                                 "or pass --project-dir / --tracking-uri")
    try:
        return tracking.check_reachable(uri)
    except tracking.TrackingUnavailable as e:
        raise PromotionError(str(e)) from e


def _experiment_ids(client: MlflowClient) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def resolve_search(client: MlflowClient, search: str):
    """The parent run of a search (see the module docstring for the three ways to name one)."""
    if RUN_ID.fullmatch(search):
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(search)
        except MlflowException as e:
            raise PromotionError(f"no MLflow run {search} in the store") from e
        kind = run.data.tags.get(ledger.TAG_KIND)
        if kind != ledger.KIND_SEARCH:
            raise PromotionError(f"run {search} is not the parent run of a search (its dcell.kind tag is {kind!r})")
        return run
    ids = _experiment_ids(client)
    newest = ["attributes.start_time DESC"]
    runs = client.search_runs(ids, filter_string=f"tags.`{ledger.TAG_KIND}` = '{ledger.KIND_SEARCH}' and tags.`{ledger.TAG_SEARCH}` = "
                                                 f"'{_quoted(search)}'", order_by=newest, max_results=1) if ids else []
    if runs:
        return runs[0]
    exp = client.get_experiment_by_name(search)
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ledger.TAG_KIND}` = '{ledger.KIND_SEARCH}'",
                                  order_by=newest, max_results=1)
        if runs:
            return runs[0]
    known = client.search_runs(ids, filter_string=f"tags.`{ledger.TAG_KIND}` = '{ledger.KIND_SEARCH}'", order_by=newest,
                               max_results=10) if ids else []
    names = ", ".join(r.data.tags.get(ledger.TAG_SEARCH, r.info.run_id) for r in known) or "none"
    raise PromotionError(f"no search {search!r} in the store (a parent run id, a search name or a search-space "
                         f"name); recent searches: {names}")


def _quoted(text: str) -> str:
    if "'" in text:
        raise PromotionError(f"search name {text!r} contains a quote")
    return text


def metric_and_mode(parent, metric: str | None, mode: str | None) -> tuple[str, str]:
    """--metric / --mode, defaulting to the search's own; another metric needs its mode."""
    own_metric, own_mode = parent.data.params.get("metric"), parent.data.params.get("mode")
    if mode is not None and mode not in MODES:
        raise PromotionError(f"--mode must be one of {MODES}, got {mode!r}")
    if metric is None:
        if own_metric is None:
            raise PromotionError(f"search run {parent.info.run_id} records no 'metric' param: pass --metric and --mode")
        metric = own_metric
    if mode is None:
        if metric != own_metric or own_mode not in MODES:
            raise PromotionError(f"--metric {metric} is not the search's own metric ({own_metric}): pass --mode max "
                                 "or --mode min")
        mode = own_mode
    return metric, mode


def check_finished(parent, allow_unfinished: bool) -> None:
    """Promotion reads a search whose winner can no longer change: a FINISHED parent run."""
    status = parent.info.status
    if status == ledger.FINISHED or allow_unfinished:
        return
    name = parent.data.tags.get(ledger.TAG_SEARCH, parent.info.run_id)
    why = {ledger.RUNNING: f"is still RUNNING (driver: {parent.data.tags.get(ledger.TAG_OWNER, 'unknown')}); its "
                           "winner may still change: wait for it to end",
           ledger.KILLED: "was interrupted (KILLED): resume it with python -m platform.search FILE --resume --name "
                          f"{name}",
           ledger.FAILED: f"did not complete with a winner (FAILED: {parent.data.tags.get(ledger.TAG_ERROR, '?')})"}
    raise NothingToPromote(f"search {name} (parent run {parent.info.run_id}) {why.get(status, f'is {status}')}; "
                           "--allow-running promotes its current winner anyway")


def best_run(client: MlflowClient, parent, metric: str, mode: str) -> Winner:
    """The search's winner by `metric` (the ledger's rule), with the trials counted by outcome."""
    records = ledger.trial_records(client, parent.info.experiment_id, parent.info.run_id, metric)
    counts = {"trials": len(records), "scored": sum(r.eligible for r in records), **ledger.counts(records)}
    won = ledger.winner(records, mode)
    if won is None:
        seen = set().union(*(r.run.data.metrics for r in records)) if records else set()
        if counts["finished"] and metric not in seen:
            shown = ", ".join(sorted(m for m in seen if "/" in m)) or "none"
            raise PromotionError(f"no run of search {parent.info.run_id} logged metric {metric!r} "
                                 f"(logged: {shown})")
        raise NothingToPromote(f"search {parent.data.tags.get(ledger.TAG_SEARCH, parent.info.run_id)} has no FINISHED "
                               f"trial with {metric}: {describe_counts(counts)}")
    return Winner(won.run, won.score, metric, mode, counts)


def describe_counts(counts: dict) -> str:
    """'6 trials: 3 scored, 1 finished without the metric, 1 failed, 1 interrupted'."""
    parts = [f"{counts['scored']} scored"]
    if counts["finished"] > counts["scored"]:
        parts.append(f"{counts['finished'] - counts['scored']} finished without the metric")
    parts += [f"{counts[k]} {k}" for k in ("stopped early", "failed", "interrupted", "running") if counts[k]]
    return f"{counts['trials']} trials: " + ", ".join(parts)
