"""The per-gene baselines of a search (dcell_core.train.baselines), fitted on the search's own data and recorded in
its parent run, so every search says how much DCell adds beyond per-gene effects.

The driver fits them once on the dataset of the search's fixed config (its train split; the penalty chosen on
validation) and logs `baseline/<kind>/<split>/<metric>` to the parent run (ledger.baseline_metric); the summary
and the report read them back with `read`. Trials whose searched parameters change the data itself (for example
data.genotypes settings) are compared against the fixed config's data.
"""
from __future__ import annotations

from dcell_core.search import ledger, tracking
from dcell_core.train.baselines import KINDS, fit_baselines

SPLITS_METRICS = ("val/pearson", "val/mse", "test/pearson", "test/mse")


def fit_and_log(client, parent_run_id: str, dataset) -> dict[str, dict[str, float]]:
    """Fit both baselines on `dataset` and log them to the parent run; returns {kind: {split/metric: value}}."""
    fitted = fit_baselines(dataset)
    values = {kind: {m: fitted[kind][m] for m in SPLITS_METRICS if m in fitted[kind]} for kind in KINDS}
    tracking.log_metrics(client, parent_run_id, {ledger.baseline_metric(kind, m): v
                                                 for kind, ms in values.items() for m, v in ms.items()}, step=0)
    return values


def read(run) -> dict[str, dict[str, float]]:
    """The baselines a parent run holds ({} when it has none, e.g. a search recorded before they existed)."""
    metrics = run.data.metrics
    return {kind: {m: metrics[ledger.baseline_metric(kind, m)] for m in SPLITS_METRICS
                   if ledger.baseline_metric(kind, m) in metrics} for kind in KINDS
            if any(ledger.baseline_metric(kind, m) in metrics for m in SPLITS_METRICS)}


def shown_metrics(metric: str) -> tuple[str, str]:
    """(validation, test) baseline metric shown next to a search's metric: its own where the baselines have it
    (val/pearson, val/mse), else val/pearson."""
    shown = metric if metric in SPLITS_METRICS else "val/pearson"
    return shown, shown.replace("val/", "test/")


def describe(values: dict[str, dict[str, float]], metric: str) -> str:
    """One line for the console: each baseline's value of the search's metric (val/pearson and val/mse have a
    baseline counterpart; other metrics are shown as val/pearson), and its test value."""
    shown, test = shown_metrics(metric)
    parts = [f"{kind} {v[shown]:.4f} (test {v[test]:.4f})" for kind, v in values.items() if shown in v and test in v]
    return f"per-gene baselines (ridge on the train split), {shown}: " + ", ".join(parts)
