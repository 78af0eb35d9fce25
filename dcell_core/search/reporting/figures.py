"""The report's plotly figures. Each takes plain data (see stats.py and report.py) and returns a plotly Figure;
page.py renders them into the HTML file with plotly.js embedded once."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dcell_core.search import ledger
from dcell_core.search.reporting.stats import SCORE, Marginal

STOP_MARK = dict(symbol="x", size=13, line=dict(width=1, color="black"))
COLORS = qualitative.Dark24
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=30, t=60, b=50))


def marginal_effects(marginals: list[Marginal], metric: str) -> go.Figure:
    """One panel per parameter: the mean score of each value with its interval, n trials in the hover text."""
    fig = make_subplots(rows=1, cols=len(marginals), subplot_titles=[m.param for m in marginals],
                        shared_yaxes=True, horizontal_spacing=0.04)
    for col, m in enumerate(marginals, start=1):
        e = m.effects
        means = np.array([x.mean for x in e])
        up = np.nan_to_num(np.array([x.high for x in e]) - means)
        down = np.nan_to_num(means - np.array([x.low for x in e]))
        fig.add_trace(go.Scatter(
            x=[x.value for x in e], y=means, mode="markers", marker=dict(size=10),
            error_y=dict(type="data", array=up, arrayminus=down, visible=True),
            text=[f"n={x.n}" + ("" if x.n >= 2 else " (no interval)") for x in e],
            hovertemplate="%{x}: %{y:.4f} (%{text})<extra></extra>", showlegend=False), row=1, col=col)
        fig.update_xaxes(type="category", row=1, col=col)
    fig.update_yaxes(title_text=f"mean {metric}", row=1, col=1)
    fig.update_layout(height=380, **LAYOUT,
                      title=f"mean score per value, {round(ledger.CI_LEVEL * 100)}% interval (Student t)")
    return fig


def learning_curves(curves: list[dict], metric: str) -> go.Figure:
    """Every trial's metric per epoch in one panel; ASHA's stops marked with an x at the last epoch."""
    fig = go.Figure()
    stop_legend = True
    for i, c in enumerate(curves):
        dash = "dot" if c["outcome"] in ("failed", "interrupted") else "solid"
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=c["epochs"], y=c["values"], mode="lines+markers", name=c["label"],
                                 line=dict(dash=dash, color=color), legendgroup=c["label"]))
        if c["outcome"] == "stopped early" and c["epochs"]:
            fig.add_trace(go.Scatter(x=[c["epochs"][-1]], y=[c["values"][-1]], mode="markers",
                                     marker=dict(color=color, **STOP_MARK), name="x: stopped by ASHA",
                                     legendgroup="asha", showlegend=stop_legend,
                                     hovertemplate=f"{c['label']}: stopped by ASHA after epoch %{{x}}<extra></extra>"))
            stop_legend = False
    fig.update_layout(height=460, xaxis_title="epoch", yaxis_title=metric, **LAYOUT,
                      title=f"{metric} per epoch, every trial (x: stopped early by ASHA)")
    fig.update_xaxes(dtick=1)
    return fig


def parallel_coordinates(table: pd.DataFrame, params: dict, metric: str) -> go.Figure:
    """Scored trials as lines through their parameters to their score, colored by the score. `params`: key ->
    (kind, the search file's values); every categorical value is a labelled tick; a loguniform axis is log10."""
    dims = []
    for key, (kind, values) in params.items():
        col = table[key].astype(str)
        if kind in ("choice", "grid"):
            labels = [str(v) for v in values]
            index = {v: i for i, v in enumerate(labels)}
            unknown = sorted(set(col) - set(index))
            if unknown:
                raise ValueError(f"{key}: trials have values {unknown} that are not among the search file's {labels}")
            dims.append(dict(label=key, values=[index[v] for v in col], tickvals=list(range(len(labels))),
                             ticktext=labels, range=[-0.25, len(labels) - 0.75]))
        elif kind == "loguniform":
            dims.append(dict(label=f"log10 {key}", values=np.log10(col.astype(float)),
                             range=[math.log10(float(values[0])), math.log10(float(values[1]))]))
        else:
            dims.append(dict(label=key, values=col.astype(float), range=[float(values[0]), float(values[1])]))
    score = table[SCORE].astype(float)
    dims.append(dict(label=metric, values=score))
    fig = go.Figure(go.Parcoords(line=dict(color=score, colorscale="Viridis", showscale=True,
                                           colorbar=dict(title=metric)), dimensions=dims,
                                 labelangle=-12, labelside="top"))
    fig.update_layout(height=460, **LAYOUT, title=f"parameters vs {metric} ({len(table)} scored trials)")
    fig.update_layout(margin=dict(l=90, r=60, t=110, b=40))
    return fig


def importances(evaluators: dict[str, dict[str, float]]) -> go.Figure:
    fig = go.Figure()
    for name, shares in evaluators.items():
        keys = list(shares)
        fig.add_trace(go.Bar(x=[shares[k] for k in keys], y=keys, orientation="h", name=name))
    fig.update_layout(height=140 + 50 * len(next(iter(evaluators.values()))), barmode="group", **LAYOUT,
                      xaxis_title="share of the score's variance", title="parameter importances (Optuna)")
    fig.update_yaxes(autorange="reversed")
    return fig


def history_lines(history: dict[str, tuple[list, list]], title: str, log_y: bool) -> go.Figure:
    """Lines of several metrics per epoch (the winner's loss components or correlations)."""
    fig = go.Figure()
    for name, (epochs, values) in history.items():
        fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=name))
    fig.update_layout(height=380, xaxis_title="epoch", **LAYOUT, title=title)
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig
