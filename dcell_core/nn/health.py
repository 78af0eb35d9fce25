"""Prediction-health metrics: is the model still predicting different values for different genotypes?"""
from __future__ import annotations

import torch

COLLAPSE_RATIO = 0.1  # prediction std below 10 % of the target std over a batch counts as collapsed


def prediction_health(pred: torch.Tensor, y: torch.Tensor, threshold: float = COLLAPSE_RATIO) -> dict[str, float]:
    """Diversity of predictions [B] against targets [B] over one batch (or a whole split).

    pred_std: std of predictions; target_std: std of targets; std_ratio = pred_std / target_std (nan when
    the targets are constant); collapsed: std_ratio < threshold, i.e. the model predicts (nearly) one value.
    """
    if pred.shape != y.shape or pred.dim() != 1 or pred.numel() < 2:
        raise ValueError(f"need predictions and targets of the same shape [B >= 2], got {tuple(pred.shape)} "
                         f"and {tuple(y.shape)}")
    pred_std = float(pred.detach().double().std())
    target_std = float(y.detach().double().std())
    ratio = pred_std / target_std if target_std > 0 else float("nan")
    return {"pred_std": pred_std, "target_std": target_std, "std_ratio": ratio,
            "collapsed": float(ratio < threshold) if target_std > 0 else float("nan")}
