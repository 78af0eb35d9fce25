"""End-of-search summary: the table of trials, parameter importances and a parallel-coordinates plot."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dcell_core.search import ledger, tracking


def score_column(metric: str) -> str:
    return f"{metric} (last epoch)"


def interval_columns(metric: str) -> tuple[str, str]:
    """The table's columns of the interval of a replicated trial's mean score (ledger.CI_LEVEL)."""
    level = f"ci{round(ledger.CI_LEVEL * 100)}"
    return f"{metric} {level} low", f"{metric} {level} high"


def trials_table(records: list[ledger.TrialRecord], params: list[str], metric: str, mode: str) -> pd.DataFrame:
    """One row per trial in the ledger's ranking (the winner first): outcome, epochs of budget, score, parameters.

    When a trial has replicates (a search with `replicates: k`), its score is the mean over them, and the table
    also has `replicates`, each replicate's score (`<metric> per replicate`, replicate 0 first, ';'-separated, at
    full precision: the interval of two replicates magnifies a rounding of them some 13-fold) and
    the interval of the mean (interval_columns); a search without replicates has none of these columns."""
    replicated = any(r.replicates > 1 for r in records)
    extra = ["replicates", f"{metric} per replicate", *interval_columns(metric)] if replicated else []
    columns = ["trial_id", "run_id", "status", "outcome", "epochs", score_column(metric), *extra, "competes", *params,
               "error"]
    rows = []
    for r in ledger.ranked(records, mode):
        rows.append({
            "trial_id": r.trial_id,
            "run_id": r.run_id,
            "status": r.status,
            "outcome": r.outcome,
            "epochs": f"{r.epochs}/{r.budget if r.budget is not None else '?'}",
            score_column(metric): r.score,
            **(dict(zip(extra, (r.replicates, ";".join(str(float(v)) for v in r.replicate_scores), r.ci_low,
                                r.ci_high))) if replicated else {}),
            "competes": r.eligible,
            **{p: r.run.data.params.get(p) for p in params},
            "error": r.run.data.tags.get(ledger.TAG_ERROR, ""),
        })
    return pd.DataFrame(rows, columns=columns)  # the columns also when there is no trial


def print_table(table: pd.DataFrame, metric: str, top: int, stream) -> None:
    if table.empty:
        print("(no trials)", file=stream)
        return
    shown = table.head(top).drop(columns=["run_id", "error"])
    low, high = interval_columns(metric)
    if low in shown:  # replicates: the mean, then its interval in one column
        interval = [f"[{a:.4f}, {b:.4f}]" for a, b in zip(shown[low], shown[high])]
        shown = shown.drop(columns=[low, high, f"{metric} per replicate"]).rename(
            columns={score_column(metric): f"{metric} mean (last epoch)"})
        shown.insert(shown.columns.get_loc("replicates") + 1, f"{round(ledger.CI_LEVEL * 100)}% interval", interval)
    with pd.option_context("display.max_columns", 50, "display.width", 200, "display.max_colwidth", 40):
        print(shown.to_string(index=False), file=stream)


def _encoded(table: pd.DataFrame, params: list[str]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Parameters as numbers for plots and importances: numeric strings parsed, other values by their index
    in sorted order (returned per parameter as its category labels)."""
    out, categories = pd.DataFrame(index=table.index), {}
    for p in params:
        col = table[p].astype(str)
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all():
            out[p] = numeric
        else:
            categories[p] = sorted(col.unique())
            out[p] = col.map({c: i for i, c in enumerate(categories[p])}).astype(float)
    return out, categories


def importances(table: pd.DataFrame, parameters, metric: str, mode: str) -> dict:
    """fANOVA importances over the scored trials, computed as the report computes them (reporting.stats: choices
    as categorical distributions, ranges with their type and scale, seeded). `parameters`: the search space's.

    Returns {"importances": {param: share}, "scored_trials": n, "reliable": bool} or {"not_computed": reason}: with fewer
    than 3 scored trials or no parameter that varies, importances mean nothing and are not made up.
    """
    from dcell_core.search.reporting import stats

    dists = {p.key: stats.optuna_distribution(p.kind, tuple(p.values)) for p in parameters if p.kind != "fixed"}
    frame = table[list(dists)].astype(str).assign(**{stats.SCORE: table[score_column(metric)].astype(float)})
    imp = stats.importances(frame, dists, mode)
    if "not_computed" in imp:
        return imp
    return {"importances": imp["evaluators"]["fANOVA"], "scored_trials": imp["trials"], "reliable": imp["reliable"]}


def parallel_coordinates(table: pd.DataFrame, params: list[str], metric: str, path: Path) -> Path | None:
    """Each scored trial a line through its (normalized) parameters to its metric, colored by the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcell_core.train.plots import save_png

    scored = table[table[score_column(metric)].notna()]
    if scored.empty or not params:
        return None
    enc, categories = _encoded(scored, params)
    enc[metric] = scored[score_column(metric)].astype(float)
    span = (enc.max() - enc.min()).replace(0, 1.0)
    norm = (enc - enc.min()) / span
    fig, ax = plt.subplots(figsize=(1.6 * (len(params) + 1) + 2, 4))
    cmap = plt.get_cmap("viridis")
    for i in norm.index:
        ax.plot(range(len(norm.columns)), norm.loc[i].values, color=cmap(float(norm.loc[i, metric])), alpha=0.8)
    ax.set_xticks(range(len(norm.columns)))
    ax.set_xticklabels([c.rsplit(".", 1)[-1] for c in norm.columns], rotation=20)
    for j, col in enumerate(norm.columns):  # every category at its place; numeric axes their lowest and highest
        if col in categories:
            for i, label in enumerate(categories[col]):
                y = (i - enc[col].min()) / span[col]
                ax.annotate(label, (j, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
            continue
        ax.annotate(f"{enc[col].max():.3g}", (j, 1.02), ha="center", fontsize=7)
        ax.annotate(f"{enc[col].min():.3g}", (j, -0.08), ha="center", fontsize=7)
    ax.set_yticks([])
    ax.set_title(f"parameters vs {score_column(metric)} ({len(scored)} trials)")
    return save_png(fig, path)


def write_parent_artifacts(client, parent_run_id: str, table: pd.DataFrame, parameters, metric: str, mode: str,
                           out_dir: Path) -> dict:
    """summary.csv, importances.json and the plot, logged to the parent run; returns the importances."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "summary.csv", index=False)
    imp = importances(table, parameters, metric, mode)
    (out_dir / "importances.json").write_text(json.dumps(imp, indent=1))
    plot = parallel_coordinates(table, [p.key for p in parameters], metric, out_dir / "parallel_coordinates.png")
    paths = [out_dir / "summary.csv", out_dir / "importances.json"] + ([plot] if plot else [])
    tracking.log_artifacts(client, parent_run_id, paths, None)
    return imp
