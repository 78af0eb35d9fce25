"""The search report: one self-contained HTML file (REPORT_FILE) that a person reads to learn what a search
found. Written at the end of every search (the driver) and logged to its parent run, so it opens from the MLflow
UI; `python -m platform.report SEARCH` writes it again from the record.

Sections (ids in reporting/page.py): the trials ranked by the ledger's winner rule (with the replicate mean and
its interval when trials have replicates); each parameter's marginal effect with a one-line verdict of whether it
is resolved; every trial's learning curve with ASHA's stops; parallel coordinates; Optuna's importances over
typed distributions; collapse flags; the winner's plots. The statistics are in reporting/stats.py, the figures in
reporting/figures.py; what "score", "winner" and the statuses mean comes from ledger.py only.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from dcell_core.search import baselines, ledger
from dcell_core.search.reporting import figures, page, stats
from dcell_core.train.metrics import LOSS_METRICS

REPORT_FILE = "report.html"
WINNER_PLOTS = ("val_predictions.png", "loss_components.png", "correlation.png")  # what train() writes in plots/


@dataclass(frozen=True)
class SearchParameter:
    """A parameter of the search file: its Hydra key, distribution kind and values (see space.py)."""
    key: str
    kind: str
    values: tuple


def search_parameters(client: MlflowClient, parent) -> list[SearchParameter]:
    """The parameters of a search as its parent run's search_space.yaml artifact (the file it ran) declares them."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="dcell-report-") as tmp:
        path = Path(client.download_artifacts(parent.info.run_id, "search_space.yaml", tmp))
        declared = (yaml.safe_load(path.read_text()) or {}).get("parameters")
    if not isinstance(declared, dict):
        raise ValueError(f"search_space.yaml of parent run {parent.info.run_id} has no parameters mapping")
    out = []
    for key, spec in declared.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"search_space.yaml of parent run {parent.info.run_id}: parameters.{key}: expected one "
                             f"distribution, got {spec!r}")
        ((kind, values),) = spec.items()
        out.append(SearchParameter(key, kind, (values,) if kind == "fixed" else tuple(values)))
    return out


def build(client: MlflowClient, parent, metric: str, mode: str, parameters) -> str:
    """The report of the search whose parent run is `parent`, as HTML. `parameters`: objects with key, kind and
    values (the search space's Parameter, or search_parameters())."""
    from dcell_core.search.summary import score_column, trials_table

    run_id, exp_id = parent.info.run_id, parent.info.experiment_id
    records = ledger.trial_records(client, exp_id, run_id, metric)
    searched = {p.key: (p.kind, tuple(p.values)) for p in parameters if p.kind != "fixed"}
    keys = list(searched)
    winner = ledger.winner(records, mode)
    ranked = ledger.ranked(records, mode)
    table = trials_table(records, keys, metric, mode)
    flags = {r.run_id: stats.collapse_reasons(r.run.data.metrics) for r in records}
    table.insert(table.columns.get_loc("competes") + 1, "collapse",
                 ["yes" if flags[r.run_id] else "" for r in ranked])
    if not table["error"].astype(bool).any():
        table = table.drop(columns=["error"])
    table = table[[c for c in table.columns if c != "run_id"] + ["run_id"]]  # the long id last
    scored = pd.DataFrame([{**{k: r.run.data.params.get(k) for k in keys}, stats.SCORE: r.score,
                            stats.REPLICATES: r.replicates, stats.REPLICATE_SCORES: tuple(r.replicate_scores)}
                           for r in records if math.isfinite(r.score)],
                          columns=[*keys, stats.SCORE, stats.REPLICATES, stats.REPLICATE_SCORES])
    name = parent.data.tags.get(ledger.TAG_SEARCH, run_id)
    counts = ledger.counts(records)
    body = {
        "trials": _trials_section(table, winner, metric, mode, score_column(metric)),
        "baselines": _baselines_section(baselines.read(parent), winner, metric, mode),
        "marginal-effects": _marginals_section(scored, searched, metric, mode),
        "learning-curves": _curves_section(client, ranked, metric),
        "parallel-coordinates": _parcoords_section(scored, searched, metric),
        "importances": _importances_section(scored, searched, mode),
        "collapse": _collapse_section(ranked, flags),
        "winner": _winner_section(client, winner, metric),
    }
    status = "" if parent.info.status == ledger.RUNNING else f" ({parent.info.status})"  # the driver writes it
    facts = [f"parent run {run_id}{status}, MLflow experiment {exp_id}",
             f"metric {metric} ({mode}); {len(records)} trials: "
             + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
             (f"winner: trial {winner.trial_id} (run {winner.run_id}, {winner.run.info.run_name}), {metric} "
              f"{winner.score:.6g} at epoch {winner.epochs}" if winner else "no winner: no trial ran its full budget "
                                                                            f"with a finite {metric}"),
             f"data {parent.data.params.get('data', '?')} ({parent.data.params.get('terms', '?')} terms, "
             f"{parent.data.params.get('genes', '?')} genes); code {parent.data.tags.get(ledger.TAG_GIT_COMMIT, '?')}"]
    return page.render(f"Search {name}", facts, body)


def _trials_section(table, winner, metric, mode, score_col) -> dict:
    notes = [f"Ranked by the winner rule (dcell_core/search/ledger.py): a trial's score is {metric} at the last epoch "
             f"it completed ({mode}); only FINISHED trials (their whole epoch budget, a finite score) compete, the "
             "best of them wins and equal scores go to the trial that started first; the others follow by score. "
             "Trials stopped early by ASHA are scored at an earlier epoch than the finished ones."]
    if "replicates" in table:
        notes.append(f"With replicates, {score_col} is the mean over a trial's seeds, and the interval columns hold "
                     f"the {round(ledger.CI_LEVEL * 100)}% Student-t interval of that mean.")
    return {"notes": notes, "html": [page.table_html(table, "trials-table", 0 if winner is not None else None)]}


def _baselines_section(fitted: dict, winner, metric: str, mode: str) -> dict:
    notes = ["Per-gene models fitted on the train split of the search's own data (dcell_core/train/baselines.py): "
             "additive = ridge regression of the phenotype on the 0/1 disruption matrix; multiplicative = the same "
             "on log phenotype. The ridge penalty is chosen on validation; test is held out. What DCell adds "
             "beyond per-gene effects is the winner's margin over them."]
    if not fitted:
        return {"notes": notes, "lines": [("unresolved", "not recorded: this search's parent run holds no baselines")]}
    shown, test = baselines.shown_metrics(metric)
    rows = [{"model": kind, shown: v.get(shown, math.nan), test: v.get(test, math.nan)} for kind, v in fitted.items()]
    lines = []
    if winner is not None and shown == metric:
        rows.insert(0, {"model": f"DCell winner (trial {winner.trial_id})", shown: winner.score})
        better = {kind: (winner.score > v[shown]) if mode == "max" else (winner.score < v[shown])
                  for kind, v in fitted.items() if shown in v}
        lines = [("resolved" if better[kind] else "unresolved",
                  f"winner {winner.score:.4f} vs {kind} {fitted[kind][shown]:.4f}: "
                  f"{winner.score - fitted[kind][shown]:+.4f}"
                  f" ({'better' if better[kind] else 'not better'})") for kind in better]
    return {"notes": notes, "lines": lines,
            "html": [page.table_html(pd.DataFrame(rows), "baselines-table", None)]}


def _marginals_section(scored, searched, metric, mode) -> dict:
    notes = [f"For each parameter, the mean score of the scored trials that had each value (uniform and loguniform "
             f"ranges in {stats.BINS} quantile bins of the sampled values, randint ones when they have more than "
             f"{stats.MAX_LEVELS} values), with the {round(ledger.CI_LEVEL * 100)}% "
             "Student-t interval of that mean over those trials (with replicates, over every replicate's score). "
             "An effect is resolved when the intervals of its best and worst value do not overlap. The other "
             "parameters vary at the same time, and ASHA-stopped trials enter with their earlier-epoch score, so "
             "these are marginal, not controlled, comparisons."]
    varying = [k for k in searched if scored[k].nunique() > 1]
    if scored.empty or not varying:
        return {"notes": notes, "lines": [("unresolved", f"not computed: {len(scored)} scored trials, "
                                                         f"{len(varying)} parameters that vary among them")]}
    marginals = [stats.marginal_effect(scored, k, searched[k][0], mode) for k in varying]
    lines = [("resolved" if m.resolved else "unresolved", m.statement) for m in marginals]
    return {"notes": notes, "lines": lines,
            "html": [page.figure_html(figures.marginal_effects(marginals, metric), "fig-marginal-effects")]}


def _history(client, run_id: str, key: str) -> tuple[list, list]:
    """(epochs, values) of a metric's history; the last value logged at an epoch counts."""
    last = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        last[m.step] = m.value
    return list(last), list(last.values())


def _curves_section(client, ranked, metric) -> dict:
    curves = []
    for r in ranked:
        epochs, values = _history(client, r.run_id, metric)
        curves.append({"label": f"{r.trial_id} {r.run.info.run_name}", "outcome": r.outcome, "epochs": epochs,
                       "values": values})
    notes = [f"{metric} at each epoch of every trial; an x marks the last epoch of a trial that ASHA stopped; dotted "
             "lines are failed or interrupted trials."]
    if not any(c["epochs"] for c in curves):
        return {"notes": notes, "lines": [("unresolved", "no trial logged an epoch")]}
    return {"notes": notes, "html": [page.figure_html(figures.learning_curves(curves, metric), "fig-learning-curves")]}


def _parcoords_section(scored, searched, metric) -> dict:
    notes = ["One line per scored trial through its parameter values to its score, colored by the score; drag along "
             "an axis to select a range. Categorical values are labelled ticks; loguniform axes are log10."]
    if scored.empty or not searched:
        return {"notes": notes, "lines": [("unresolved", "no scored trial, or no searched parameter")]}
    fig = figures.parallel_coordinates(scored, searched, metric)
    return {"notes": notes, "html": [page.figure_html(fig, "fig-parallel-coordinates")]}


def _importances_section(scored, searched, mode) -> dict:
    dists = {k: stats.optuna_distribution(kind, values) for k, (kind, values) in searched.items()}
    imp = stats.importances(scored, dists, mode)
    notes = ["Optuna's fANOVA and mean-decrease-in-impurity evaluators (seed 0) over the scored trials, with choices "
             "as categorical distributions and ranges with their own type and scale."]
    if "not_computed" in imp:
        return {"notes": notes, "lines": [("unresolved", f"not computed: {imp['not_computed']}")]}
    lines = [("resolved" if imp["reliable"] else "flag",
              f"{'reliable' if imp['reliable'] else 'UNRELIABLE'}: {imp['trials']} scored trials (below "
              f"{stats.RELIABLE_TRIALS} the forests behind these numbers have too few points to rank parameters)")]
    if imp["constant"]:
        lines.append(("note", f"left out (one value among the scored trials): {', '.join(imp['constant'])}"))
    return {"notes": notes, "lines": lines,
            "html": [page.figure_html(figures.importances(imp["evaluators"]), "fig-importances")]}


def _collapse_section(ranked, flags) -> dict:
    notes = [f"Rule: {stats.COLLAPSE_RULE}."]
    hit = [r for r in ranked if flags[r.run_id]]
    if not hit:
        return {"notes": notes, "lines": [("resolved", f"no trial collapsed ({len(ranked)} checked)")]}
    return {"notes": notes, "lines": [("flag", f"trial {r.trial_id} ({r.run.info.run_name}, {r.outcome}, epoch "
                                               f"{r.epochs}): " + "; ".join(flags[r.run_id])) for r in hit]}


def _winner_section(client, winner, metric) -> dict:
    if winner is None:
        return {"notes": [], "lines": [("unresolved", "no winner: no trial ran its full budget with a finite score")]}
    notes = [f"Trial {winner.trial_id}, run {winner.run_id} ({winner.run.info.run_name}): {metric} "
             f"{winner.score:.6g} at epoch {winner.epochs}."]
    logged = {Path(a.path).name for a in client.list_artifacts(winner.run_id, "plots")}
    found = [name for name in WINNER_PLOTS if name in logged]
    if found:
        rep = winner.run.data.tags.get(ledger.TAG_CHECKPOINT_REPLICATE)
        notes.append("Its plots as training wrote them (plots/ of the run" + (f", replicate {rep}" if rep else "")
                     + f"): {', '.join(found)}.")
        with tempfile.TemporaryDirectory(prefix="dcell-report-") as tmp:
            html = [page.image_html(Path(client.download_artifacts(winner.run_id, f"plots/{name}", tmp)).read_bytes(),
                                    name) for name in found]
        return {"notes": notes, "html": html}
    notes.append("The run has no plots/ artifact: its loss components and correlations, re-plotted from its logged "
                 "metrics (no predictions plot without it).")
    losses = {k: _history(client, winner.run_id, k) for k in [f"train/{n}" for n in LOSS_METRICS] + ["val/mse"]}
    losses = {k: v for k, v in losses.items() if v[0] and any(x > 0 for x in v[1])}
    corr = {k: _history(client, winner.run_id, k) for k in ("train/pearson", "val/pearson", "val/spearman")}
    return {"notes": notes, "html": [
        page.figure_html(figures.history_lines(losses, "loss components", log_y=True), "fig-winner-losses"),
        page.figure_html(figures.history_lines({k: v for k, v in corr.items() if v[0]}, "correlation", log_y=False),
                         "fig-winner-correlation")]}


def write(client: MlflowClient, parent_run_id: str, metric: str, mode: str, parameters, path: Path) -> Path:
    """Build the report of a search and write it atomically to `path`."""
    from dcell_core.fileio import atomic_write_bytes

    html = build(client, client.get_run(parent_run_id), metric, mode, parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, html.encode())
    return path


def write_and_log(client: MlflowClient, parent_run_id: str, metric: str, mode: str, parameters, path: Path) -> Path:
    """The report written to `path` and logged as the parent run's REPORT_FILE artifact."""
    if path.name != REPORT_FILE:
        raise ValueError(f"the logged report must be named {REPORT_FILE}, got {path}")
    write(client, parent_run_id, metric, mode, parameters, path)
    client.log_artifact(parent_run_id, str(path))
    return path
