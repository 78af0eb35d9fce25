"""One shape bucket of a stratum: the terms whose (width, fan-in) were grouped together, computed as one batch.

A bucket holds no parameters of its own: its parameters are padded blocks inside the stratum's flat parameters
(one tensor per kind and stratum, see stratum.py), one slice per term along dim 0 of each block:
    child_weight  [n, w_max, c_max]  first linear layer, children columns (term i uses [:L_i, :C_i]); absent
                                     when no term of the bucket has children (c_max = 0)
    layer_weights.{k - 1}  [n, w_max, w_max]   extra subsystem layers k >= 1 ([:L_i, :L_i])
    biases.{k}   [n, w_max, 1]       norm_weights.{k}, norm_biases.{k}  [n, w_max]
    head_weight [n, 1, w_max]       head_bias [n, 1, 1]
These names and shapes (under `strata.{s}.buckets.{q}.`) are also the stored form of the model's state dict.
The gene columns of the first layer (g_max padded columns per term) are not stored here but unpadded in the
stratum's flat `gene_weight` (see stratum_dcell.py); batch-norm statistics are per stratum too.
Padded entries are zero when built or loaded and receive exactly zero gradient (padded inputs gather the zero
row, padded outputs are never gathered, zero padded head/next-layer weights read them), so gradient-based
optimizers keep them zero; `Stratum.padding_violations()` checks it. Layer norm is masked to the true width.
"""
from __future__ import annotations

import torch
from torch import nn

from dcell_core.nn.common import NORM_EPS


class TermBucket(nn.Module):
    def __init__(self, widths: list[int], child_fans: list[int], gene_fans: list[int], w_max: int, c_max: int,
                 g_max: int, row_offset: int, layers: int, norm_type: str):
        super().__init__()
        n = len(widths)
        if c_max + g_max < 1:
            raise ValueError(f"bucket at row {row_offset}: its terms have neither children nor genes")
        self.n, self.w_max, self.c_max, self.g_max, self.row_offset = n, w_max, c_max, g_max, row_offset
        self.layers, self.has_affine = layers, norm_type != "none"
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.long), persistent=False)
        self.register_buffer("child_fans", torch.tensor(child_fans, dtype=torch.long), persistent=False)
        self.register_buffer("gene_fans", torch.tensor(gene_fans, dtype=torch.long), persistent=False)
        rows = torch.arange(w_max).unsqueeze(0) < self.widths.unsqueeze(1)  # [n, w_max] true neurons
        self.register_buffer("row_mask", rows.unsqueeze(-1).to(torch.get_default_dtype()), persistent=False)
        # integer widths are exact in any float dtype (a stored reciprocal would keep float32 rounding
        # after .double())
        self.register_buffer("width_f", self.widths.view(n, 1, 1).to(torch.get_default_dtype()), persistent=False)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The padded block of every parameter kind of this bucket, by its stored name, in the stored order (that
        of the per-bucket parameters of earlier versions: the random initialization draws in this order)."""
        n, w = self.n, self.w_max
        out: dict[str, tuple[int, ...]] = {"child_weight": (n, w, self.c_max)} if self.c_max else {}
        out["head_weight"], out["head_bias"] = (n, 1, w), (n, 1, 1)
        out.update({f"layer_weights.{k}": (n, w, w) for k in range(self.layers - 1)})
        out.update({f"biases.{k}": (n, w, 1) for k in range(self.layers)})
        for kind in ("norm_weights", "norm_biases"):
            out.update({f"{kind}.{k}": (n, w) for k in range(self.layers * self.has_affine)})
        return out

    # ---- padding ------------------------------------------------------------------------------------
    def valid_masks(self) -> dict[str, torch.Tensor]:
        """Boolean mask of the true (unpadded) entries of every parameter block, by stored name."""
        ar = torch.arange(self.w_max, device=self.widths.device)
        rows = ar.view(1, -1) < self.widths.view(-1, 1)  # [n, w_max]
        out = {}
        if self.c_max:
            cols = torch.arange(self.c_max, device=rows.device).view(1, -1) < self.child_fans.view(-1, 1)
            out["child_weight"] = rows.unsqueeze(2) & cols.unsqueeze(1)
        for k in range(self.layers - 1):
            out[f"layer_weights.{k}"] = rows.unsqueeze(2) & rows.unsqueeze(1)
        for k in range(self.layers):
            out[f"biases.{k}"] = rows.unsqueeze(2)
        for k in range(self.layers * self.has_affine):
            out[f"norm_weights.{k}"] = out[f"norm_biases.{k}"] = rows
        out["head_weight"] = rows.unsqueeze(1)
        out["head_bias"] = torch.ones(self.n, 1, 1, dtype=torch.bool, device=rows.device)
        return out

    # ---- compute ------------------------------------------------------------------------------------
    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Layer norm of h [n, w_max, B] over each term's true L_t neurons (biased variance, as nn.LayerNorm),
        before its gain and shift (the stratum applies those to all its buckets at once); padded rows are 0."""
        mean = (h * self.row_mask).sum(1, keepdim=True) / self.width_f  # [n, 1, B]
        centered = (h - mean) * self.row_mask
        var = (centered * centered).sum(1, keepdim=True) / self.width_f
        return centered * torch.rsqrt(var + NORM_EPS)
