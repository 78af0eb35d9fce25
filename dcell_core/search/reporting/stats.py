"""The report's statistics, on plain tables (no MLflow): each parameter's marginal effect and whether it is resolved,
parameter importances from Optuna's evaluators over properly typed distributions, and the collapse rule.

A table here has one row per trial: a column per searched parameter (the values as the child runs log them:
strings), SCORE (the trial's score by the ledger's rule, NaN when it has none; with replicates, the mean over
them) and optionally REPLICATES.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dcell_core.search import ledger

SCORE = "score"
REPLICATES = "replicates"  # optional column: the trial's replicate count (its score is their mean)
REPLICATE_SCORES = "replicate_scores"  # optional column: the trial's per-replicate scores (a tuple)
MAX_LEVELS = 8  # a numeric range with more distinct sampled values than this is shown in quantile bins
BINS = 4
# Below this many scored trials the importances are flagged unreliable: the random forests that fANOVA and the
# mean decrease in impurity fit have too few points, and rankings move from one forest seed to the next.
RELIABLE_TRIALS = 20
# Collapse: the training loop's own flag (val/collapse = 1 when the validation prediction std is below
# train.collapse_ratio x the target std, see dcell_core/nn/health.py), or no correlation although the targets vary.
NO_SIGNAL_PEARSON = 0.05
COLLAPSE_RULE = (f"a trial is flagged when, at its last epoch, val/collapse > 0 (the training loop's flag: the "
                 f"validation prediction std is below train.collapse_ratio, 0.1 by default, times the target std; with "
                 f"replicates it is the share of replicates that collapsed), or when the targets vary (val/std_ratio is "
                 f"a number) but val/pearson is NaN (constant predictions) or below {NO_SIGNAL_PEARSON} in absolute "
                 f"value")


@dataclass(frozen=True)
class ValueEffect:
    value: str  # the parameter's value, or a bin of a numeric range ("[0.001, 0.003]")
    n: int  # scores behind the mean: trials that had the value, or with replicates their replicate scores
    mean: float
    low: float  # the ledger.CI_LEVEL Student-t interval of the mean (NaN for n = 1)
    high: float


@dataclass(frozen=True)
class Marginal:
    param: str
    effects: tuple[ValueEffect, ...]  # best mean first (by the search's mode)
    resolved: bool
    statement: str  # one line: resolved or not, and why


def _levels(values: pd.Series, kind: str) -> pd.Series:
    """The groups a parameter's values fall in: each value of a choice or grid, and of a randint with at most
    MAX_LEVELS distinct values; else (uniform, loguniform, wide randint) BINS quantile bins of the numeric values,
    labelled by their observed ends."""
    few = values.nunique() <= (MAX_LEVELS if kind == "randint" else BINS)
    if kind in ("choice", "grid", "fixed") or few:
        return values.astype(str)
    x = pd.to_numeric(values, errors="raise")
    bins = pd.qcut(x, q=min(BINS, x.nunique()), duplicates="drop")
    return x.groupby(bins, observed=True).transform(lambda g: f"[{g.min():.3g}, {g.max():.3g}]")


def marginal_effect(table: pd.DataFrame, param: str, kind: str, mode: str) -> Marginal:
    """Mean score per value of `param` over the scored trials that had it, with its interval, and whether the
    effect is resolved: the intervals of its best and worst value (among values with an interval, i.e. at least 2
    scores) do not overlap. With replicates (REPLICATE_SCORES), every replicate's score counts once, so a
    one-parameter design with k replicates has k scores per value."""
    scored = table[np.isfinite(table[SCORE].astype(float))]
    levels = _levels(scored[param], kind)
    if REPLICATE_SCORES in scored and scored[REPLICATE_SCORES].map(len).max() > 1:
        per = pd.DataFrame({"level": levels, "s": scored[REPLICATE_SCORES].map(list)}).explode("s")
        values = per["s"].astype(float)
        groups = values[np.isfinite(values)].groupby(per["level"][np.isfinite(values)])
    else:
        groups = scored[SCORE].astype(float).groupby(levels)
    effects = [ValueEffect(str(v), len(g), *ledger.mean_interval(g.to_numpy())) for v, g in groups]
    sign = -1.0 if mode == "max" else 1.0
    effects.sort(key=lambda e: (sign * e.mean, e.value))
    where = f"at {len(scored)} scored trials"
    if REPLICATES in scored and scored[REPLICATES].max() > 1:  # each trial's score is the mean of its replicates
        low, high = int(scored[REPLICATES].min()), int(scored[REPLICATES].max())
        where += f" of {low if low == high else f'{low}-{high}'} replicates each"
    with_interval = [e for e in effects if e.n >= 2]
    if len(effects) < 2:
        return Marginal(param, tuple(effects), False, f"{param}: not resolved {where}: only one value was scored")
    if len(with_interval) < 2:
        return Marginal(param, tuple(effects), False,
                        f"{param}: not resolved {where}: fewer than two of its values have 2 or more scores "
                        "(an interval needs 2)")
    best, worst = with_interval[0], with_interval[-1]
    apart = best.low > worst.high if mode == "max" else best.high < worst.low
    said = (f"{best.value} {best.mean:.4g} [{best.low:.4g}, {best.high:.4g}] (n={best.n}) vs {worst.value} "
            f"{worst.mean:.4g} [{worst.low:.4g}, {worst.high:.4g}] (n={worst.n})")
    level = f"{round(ledger.CI_LEVEL * 100)}%"
    if apart:
        return Marginal(param, tuple(effects), True, f"{param}: resolved {where}: best and worst value's {level} "
                                                     f"intervals do not overlap: {said}")
    return Marginal(param, tuple(effects), False, f"{param}: not resolved {where}: best and worst value's {level} "
                                                  f"intervals overlap: {said}")


def optuna_distribution(kind: str, values: tuple):
    """The Optuna distribution of a search-file parameter (None for `fixed`): choices and grids are categorical
    over the values as the runs log them (str), never ordinal numbers; ranges keep their type and scale."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if kind in ("choice", "grid"):
        return CategoricalDistribution([str(v) for v in values])
    if kind in ("uniform", "loguniform"):
        return FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")
    if kind == "randint":
        return IntDistribution(int(values[0]), int(values[1]))
    if kind == "fixed":
        return None
    raise ValueError(f"unknown parameter kind {kind!r}")


def _typed(value: str, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        if value not in dist.choices:
            raise ValueError(f"value {value!r} is not one of the search file's choices {list(dist.choices)}")
        return value
    return int(value) if isinstance(dist, IntDistribution) else float(value)


def importances(table: pd.DataFrame, distributions: dict, mode: str) -> dict:
    """Importances of the parameters that vary among the scored trials, by Optuna's fANOVA and mean decrease in
    impurity evaluators (seeded). Returns {"evaluators": {name: {param: share}}, "trials": n, "reliable": bool,
    "constant": [params]} or {"not_computed": reason}."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    scored = table[np.isfinite(table[SCORE].astype(float))]
    searched = {p: d for p, d in distributions.items() if d is not None}
    varying = [p for p in searched if scored[p].nunique() > 1]
    if len(scored) < 3 or not varying:
        return {"not_computed": f"{len(scored)} scored trials and {len(varying)} parameters that vary among them "
                                "(need at least 3 and 1)"}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in scored.iterrows():
        study.add_trial(optuna.trial.create_trial(
            params={p: _typed(row[p], searched[p]) for p in varying},
            distributions={p: searched[p] for p in varying}, value=float(row[SCORE])))
    evaluators = {"fANOVA": FanovaImportanceEvaluator(seed=0),
                  "mean decrease in impurity": MeanDecreaseImpurityImportanceEvaluator(seed=0)}
    return {"evaluators": {name: {k: float(v) for k, v in optuna.importance.get_param_importances(
                study, evaluator=ev).items()} for name, ev in evaluators.items()},
            "trials": len(scored), "reliable": len(scored) >= RELIABLE_TRIALS,
            "constant": [p for p in searched if p not in varying]}


def collapse_reasons(metrics: dict) -> list[str]:
    """Why a trial's last-epoch metrics say its predictions collapsed (COLLAPSE_RULE); empty when they did not."""
    nan = float("nan")
    collapse, ratio = metrics.get("val/collapse", nan), metrics.get("val/std_ratio", nan)
    pearson = metrics.get("val/pearson", nan)
    out = []
    if math.isfinite(collapse) and collapse > 0:
        out.append(f"val/collapse {collapse:.3g} (val/std_ratio {ratio:.3g}, val/pred_std "
                   f"{metrics.get('val/pred_std', nan):.3g})")
    if math.isfinite(ratio):
        if not math.isfinite(pearson):
            out.append("val/pearson is NaN while the targets vary (constant predictions)")
        elif abs(pearson) < NO_SIGNAL_PEARSON:
            out.append(f"val/pearson {pearson:.3g}: no correlation with the targets")
    return out
