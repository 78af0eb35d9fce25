"""One shape bucket of a stratum: the terms whose (width, fan-in) were grouped together, computed as one batch.

Parameters are padded blocks, one slice per term along dim 0:
    weights[0]  [n, w_max, f_max]   first linear layer (term i uses [:L_i, :F_i])
    weights[k]  [n, w_max, w_max]   extra subsystem layers k >= 1 ([:L_i, :L_i])
    biases[k]   [n, w_max, 1]       norm_weights[k], norm_biases[k]  [n, w_max]
    head_weight [n, 1, w_max]       head_bias [n, 1, 1]
Padded entries are zero when built or loaded and receive exactly zero gradient (padded inputs gather the zero
row, padded outputs are never gathered, zero padded head/next-layer weights read them), so gradient-based
optimizers keep them zero; `padding_violations()` checks it. Layer norm is masked to the true width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS


class TermBucket(nn.Module):
    def __init__(self, widths: list[int], fan_ins: list[int], w_max: int, f_max: int, row_offset: int,
                 layers: int, norm_type: str, norm_order: str, activation):
        super().__init__()
        n = len(widths)
        self.n, self.w_max, self.f_max, self.row_offset = n, w_max, f_max, row_offset
        self.norm_type, self.norm_order, self.act = norm_type, norm_order, activation
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(n, w_max, f_max if k == 0 else w_max)) for k in range(layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max, 1)) for _ in range(layers))
        has_affine = norm_type != "none"
        self.norm_weights = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max)) for _ in range(layers * has_affine))
        self.norm_biases = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max)) for _ in range(layers * has_affine))
        self.head_weight = nn.Parameter(torch.zeros(n, 1, w_max))
        self.head_bias = nn.Parameter(torch.zeros(n, 1, 1))
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.long), persistent=False)
        self.register_buffer("fan_ins", torch.tensor(fan_ins, dtype=torch.long), persistent=False)
        rows = torch.arange(w_max).unsqueeze(0) < self.widths.unsqueeze(1)  # [n, w_max] true neurons
        self.register_buffer("row_mask", rows.unsqueeze(-1).to(torch.get_default_dtype()), persistent=False)
        # integer widths are exact in any float dtype (a stored reciprocal would keep float32 rounding
        # after .double())
        self.register_buffer("width_f", self.widths.view(n, 1, 1).to(torch.get_default_dtype()), persistent=False)
        for k in range(layers if norm_type == "batch" else 0):
            self.register_buffer(f"running_mean_{k}", torch.zeros(n * w_max))
            self.register_buffer(f"running_var_{k}", torch.ones(n * w_max) * rows.reshape(-1))

    # ---- padding ------------------------------------------------------------------------------------
    def valid_masks(self) -> dict[str, torch.Tensor]:
        """Boolean mask of the true (unpadded) entries of every parameter, by parameter name."""
        ar = torch.arange(self.w_max, device=self.widths.device)
        rows = ar.view(1, -1) < self.widths.view(-1, 1)  # [n, w_max]
        cols0 = torch.arange(self.f_max, device=rows.device).view(1, -1) < self.fan_ins.view(-1, 1)
        out = {}
        for k in range(len(self.weights)):
            cols = cols0 if k == 0 else rows
            out[f"weights.{k}"] = rows.unsqueeze(2) & cols.unsqueeze(1)
            out[f"biases.{k}"] = rows.unsqueeze(2)
        for k in range(len(self.norm_weights)):
            out[f"norm_weights.{k}"] = out[f"norm_biases.{k}"] = rows
        out["head_weight"] = rows.unsqueeze(1)
        out["head_bias"] = torch.ones(self.n, 1, 1, dtype=torch.bool, device=rows.device)
        return out

    def reset_parameters(self, init_range: float) -> None:
        with torch.no_grad():
            masks = self.valid_masks()
            for name, p in self.named_parameters():
                if name.startswith("norm_weights"):
                    p.copy_(masks[name].to(p.dtype))
                elif name.startswith("norm_biases"):
                    p.zero_()
                else:
                    p.uniform_(-init_range, init_range).mul_(masks[name].to(p.dtype))

    def padding_violations(self) -> list[str]:
        masks = self.valid_masks()
        return [name for name, p in self.named_parameters() if bool((p.detach()[~masks[name]] != 0).any())]

    # ---- compute ------------------------------------------------------------------------------------
    def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inp [n, f_max, B] -> (O [n, w_max, B], head outputs [n, 1, B])."""
        h = inp
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, w, h)  # [n, w_max, B]
            if self.norm_order == "act_norm":
                h = self._norm(self.act(h), k)
            else:
                h = self.act(self._norm(h, k))
        return h, torch.baddbmm(self.head_bias, self.head_weight, h)

    def _norm(self, h: torch.Tensor, k: int) -> torch.Tensor:
        if self.norm_type == "none":
            return h
        gain, shift = self.norm_weights[k], self.norm_biases[k]  # [n, w_max]
        n, w, B = h.shape
        if self.norm_type == "batch":
            # per neuron over the batch: channels = the n * w_max neurons, one "length" axis = the batch
            out = F.batch_norm(h.reshape(1, n * w, B), getattr(self, f"running_mean_{k}"),
                               getattr(self, f"running_var_{k}"), gain.reshape(-1), shift.reshape(-1),
                               self.training, BN_MOMENTUM, NORM_EPS)
            return out.view(n, w, B)
        # layer norm over each term's true L_t neurons (biased variance, as nn.LayerNorm)
        mean = (h * self.row_mask).sum(1, keepdim=True) / self.width_f  # [n, 1, B]
        centered = (h - mean) * self.row_mask
        var = (centered * centered).sum(1, keepdim=True) / self.width_f
        return centered * torch.rsqrt(var + NORM_EPS) * gain.unsqueeze(-1) + shift.unsqueeze(-1)
