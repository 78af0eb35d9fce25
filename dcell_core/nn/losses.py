"""The DCell objective: MSE(root) + alpha x SUM_{t != root} MSE(aux_t) + lambda x ||W||^2."""
from __future__ import annotations

import torch

from dcell_core.nn.common import DCellOutput
from dcell_core.nn.config import LossConfig


def dcell_loss(out: DCellOutput, y: torch.Tensor, cfg: LossConfig,
               decay_weights: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its components; every auxiliary head predicts the same phenotype y [B].

    Components: `root` MSE of the root head; `aux_sum` / `aux_mean` the sum / mean over the T-1 non-root terms
    of their MSEs (raw, before alpha); `aux_weighted` alpha x aux_sum (aux_reduction="sum", paper) or
    alpha x aux_mean ("mean"); `l2` lambda x sum of squared entries of `decay_weights` (the model's
    `decay_weights()`: weight matrices only, no biases, norm parameters or embeddings); `total`.
    `decay_weights` is required when cfg.weight_decay > 0; with weight_decay == 0 the term is exactly 0.
    """
    cfg.validate()
    if y.shape != out.prediction.shape:
        raise ValueError(f"targets have shape {tuple(y.shape)}, predictions {tuple(out.prediction.shape)}")
    root = torch.mean((out.prediction - y) ** 2)
    per_term = torch.mean((out.aux - y.unsqueeze(1)) ** 2, dim=0)  # [T-1]
    aux_sum = per_term.sum()
    aux_mean = per_term.mean() if per_term.numel() else aux_sum
    aux_weighted = cfg.alpha * (aux_sum if cfg.aux_reduction == "sum" else aux_mean)
    if cfg.weight_decay > 0:
        if decay_weights is None:
            raise ValueError("weight_decay > 0 needs decay_weights (model.decay_weights())")
        l2 = cfg.weight_decay * sum(torch.sum(w * w) for w in decay_weights)
    else:
        l2 = root.new_zeros(())
    total = root + aux_weighted + l2
    return total, {"total": total, "root": root, "aux_sum": aux_sum, "aux_mean": aux_mean,
                   "aux_weighted": aux_weighted, "l2": l2}
