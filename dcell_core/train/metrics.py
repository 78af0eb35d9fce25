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


# Every metric train() reports per epoch, declared once: name -> the direction in which it improves ("max",
# "min"), or None where no direction is implied (diagnostics). loop.py refuses to report an epoch whose dict
# differs from it, and the search reads it (dcell_core.search.ledger) to check a search file's metric.
# train/<name> -> component of dcell_loss
LOSS_METRICS = {"loss": "total", "root_mse": "root", "aux": "aux_sum", "aux_mean": "aux_mean",
                "aux_weighted": "aux_weighted", "l2": "l2"}
TRAIN_METRICS: dict[str, str | None] = {
    "epoch": None,
    **{f"train/{name}": "min" for name in LOSS_METRICS},
    "train/pearson": "max",
    "val/mse": "min", "val/pearson": "max", "val/spearman": "max",
    "val/pred_std": None, "val/std_ratio": None, "val/collapse": None,
    "init_diversity": None, "lr": None, "samples_per_s": None, "epoch_s": None,
}
