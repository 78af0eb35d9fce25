"""Which trial wins a search: the best FINISHED child run by a metric, found in the MLflow records.

A search is named by its parent run id, by its name (the `dcell.search` tag, e.g. norms-20250101-120000), or by
its search-space name (the MLflow experiment; its latest parent run). The metric value of a run is the last one
it logged (its final epoch's), because that is the epoch of the checkpoint it leaves. Runs that did not finish
or lack the metric are skipped and counted; equal values go to the run that started first.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from dcell_core.search import tracking

RUN_ID = re.compile(r"[0-9a-f]{32}")
MODES = ("max", "min")


class PromotionError(ValueError):
    """Bad input to a promotion (unknown search, metric, store); the CLI prints it and exits 2."""


class NothingToPromote(RuntimeError):
    """The search has no run that can be promoted; the CLI prints it and exits 1."""


@dataclass(frozen=True)
class Winner:
    run: object = field(repr=False)  # mlflow Run
    value: float
    metric: str
    mode: str
    counts: dict  # finished, scored, skipped_status (by status), skipped_no_metric

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
        kind = run.data.tags.get(tracking.TAG_KIND)
        if kind != "search":
            raise PromotionError(f"run {search} is not the parent run of a search (its dcell.kind tag is {kind!r})")
        return run
    ids = _experiment_ids(client)
    newest = ["attributes.start_time DESC"]
    runs = client.search_runs(ids, filter_string=f"tags.`{tracking.TAG_KIND}` = 'search' and tags.`dcell.search` = "
                                                 f"'{_quoted(search)}'", order_by=newest, max_results=1) if ids else []
    if runs:
        return runs[0]
    exp = client.get_experiment_by_name(search)
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_KIND}` = 'search'",
                                  order_by=newest, max_results=1)
        if runs:
            return runs[0]
    known = client.search_runs(ids, filter_string=f"tags.`{tracking.TAG_KIND}` = 'search'", order_by=newest,
                               max_results=10) if ids else []
    names = ", ".join(r.data.tags.get("dcell.search", r.info.run_id) for r in known) or "none"
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


def best_run(client: MlflowClient, parent, metric: str, mode: str) -> Winner:
    """The best FINISHED trial run of `parent` by its last value of `metric` (earlier start wins ties)."""
    children = [r for r in tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id)
                if r.data.tags.get(tracking.TAG_KIND) == "trial"]
    by_status: dict[str, int] = {}
    scored, no_metric, seen_metrics = [], 0, set()
    for run in children:
        seen_metrics |= set(run.data.metrics)
        if run.info.status != "FINISHED":
            by_status[run.info.status] = by_status.get(run.info.status, 0) + 1
            continue
        value = run.data.metrics.get(metric)
        if value is None or math.isnan(value):
            no_metric += 1
            continue
        scored.append((value, run))
    counts = {"trials": len(children), "finished": len(scored) + no_metric, "scored": len(scored),
              "skipped_status": by_status, "skipped_no_metric": no_metric}
    if not scored:
        if counts["finished"] and metric not in seen_metrics:
            shown = ", ".join(sorted(m for m in seen_metrics if "/" in m)) or "none"
            raise PromotionError(f"no run of search {parent.info.run_id} logged metric {metric!r} "
                                 f"(logged: {shown})")
        raise NothingToPromote(f"search {parent.data.tags.get('dcell.search', parent.info.run_id)} has no FINISHED "
                               f"trial with {metric}: {describe_counts(counts)}")
    sign = -1.0 if mode == "max" else 1.0
    value, run = min(scored, key=lambda vr: (sign * vr[0], vr[1].info.start_time, vr[1].info.run_id))
    return Winner(run, float(value), metric, mode, counts)


def describe_counts(counts: dict) -> str:
    """'3 trials: 1 scored, 1 not finished (1 KILLED), 1 finished without the metric'."""
    unfinished = counts["skipped_status"]
    detail = f" ({', '.join(f'{n} {s}' for s, n in sorted(unfinished.items()))})" if unfinished else ""
    return (f"{counts['trials']} trials: {counts['scored']} scored, {sum(unfinished.values())} not finished{detail}, "
            f"{counts['skipped_no_metric']} finished without the metric")
