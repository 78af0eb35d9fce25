"""Evaluation metrics of the root prediction."""
from __future__ import annotations

import numpy as np
from scipy import stats


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, Pearson and Spearman of predictions [N] against targets [N]; correlations are NaN for constant input."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} must be equal 1-d shapes")
    mse = float(np.mean((pred - target) ** 2))
    if pred.std() == 0 or target.std() == 0:
        return {"mse": mse, "pearson": float("nan"), "spearman": float("nan")}
    return {"mse": mse, "pearson": float(stats.pearsonr(pred, target).statistic),
            "spearman": float(stats.spearmanr(pred, target).statistic)}
