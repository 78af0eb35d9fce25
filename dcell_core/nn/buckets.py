"""One shape bucket of a stratum: the terms whose (width, fan-in) were grouped together, computed as one batch.

Parameters are padded blocks, one slice per term along dim 0:
    child_weight  [n, w_max, c_max]  first linear layer, children columns (term i uses [:L_i, :C_i]); absent
                                     when no term of the bucket has children (c_max = 0)
    gene_weight   [n, w_max, g_max]  first linear layer, gene columns ([:L_i, :G_i]); absent when g_max = 0
    layer_weights[k - 1]  [n, w_max, w_max]   extra subsystem layers k >= 1 ([:L_i, :L_i])
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
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS


class TermBucket(nn.Module):
    def __init__(self, widths: list[int], child_fans: list[int], gene_fans: list[int], w_max: int, c_max: int,
                 g_max: int, row_offset: int, layers: int, norm_type: str, norm_order: str, activation):
        super().__init__()
        n = len(widths)
        if c_max + g_max < 1:
            raise ValueError(f"bucket at row {row_offset}: its terms have neither children nor genes")
        self.n, self.w_max, self.c_max, self.g_max, self.row_offset = n, w_max, c_max, g_max, row_offset
        self.norm_type, self.norm_order, self.act = norm_type, norm_order, activation
        self.child_weight = nn.Parameter(torch.zeros(n, w_max, c_max)) if c_max else None
        self.gene_weight = nn.Parameter(torch.zeros(n, w_max, g_max)) if g_max else None
        self.layer_weights = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max, w_max)) for _ in range(layers - 1))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max, 1)) for _ in range(layers))
        has_affine = norm_type != "none"
        self.norm_weights = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max)) for _ in range(layers * has_affine))
        self.norm_biases = nn.ParameterList(nn.Parameter(torch.zeros(n, w_max)) for _ in range(layers * has_affine))
        self.head_weight = nn.Parameter(torch.zeros(n, 1, w_max))
        self.head_bias = nn.Parameter(torch.zeros(n, 1, 1))
        self.register_buffer("widths", torch.tensor(widths, dtype=torch.long), persistent=False)
        self.register_buffer("child_fans", torch.tensor(child_fans, dtype=torch.long), persistent=False)
        self.register_buffer("gene_fans", torch.tensor(gene_fans, dtype=torch.long), persistent=False)
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
        out = {}
        for name, fans, width in (("child_weight", self.child_fans, self.c_max),
                                  ("gene_weight", self.gene_fans, self.g_max)):
            if width:
                cols = torch.arange(width, device=rows.device).view(1, -1) < fans.view(-1, 1)
                out[name] = rows.unsqueeze(2) & cols.unsqueeze(1)
        for k in range(len(self.layer_weights)):
            out[f"layer_weights.{k}"] = rows.unsqueeze(2) & rows.unsqueeze(1)
        for k in range(len(self.biases)):
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
    def forward(self, inp_c: torch.Tensor | None, inp_g: torch.Tensor | None,
                sparse_genes: tuple[torch.Tensor, ...] | None = None, batch: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """children inputs [n, c_max, B], gene inputs [n, g_max, B] (None where the part is empty), or instead
        of the gene inputs their nonzero entries (slot i, column j, sample b, value), each [m], and the batch
        size -> (O [n, w_max, B], head outputs [n, 1, B])."""
        h = self.biases[0]
        if self.child_weight is not None:
            h = torch.baddbmm(h, self.child_weight, inp_c)  # [n, w_max, B]
        if self.gene_weight is not None and sparse_genes is not None:
            h = _SparseGeneColumns.apply(h, self.gene_weight, self.child_weight is not None, *sparse_genes, batch)
        elif self.gene_weight is not None:
            h = torch.baddbmm(h, self.gene_weight, inp_g)
        for k in range(len(self.biases)):
            if k:
                h = torch.baddbmm(self.biases[k], self.layer_weights[k - 1], h)
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


class _SparseGeneColumns(torch.autograd.Function):
    """h [n, w_max, B] (or the bias [n, w_max, 1]) + the gene columns of the first layer applied to the gene
    inputs, given only their nonzero entries: out[i, :, b] += value x weight[i, :, j] for every entry. Exact for
    any input values; its cost grows with the entries, not with the gene columns, so it is fast when a genotype
    disrupts a few genes. The weight gradient is dense (zero where no entry touched it), as the matmul's."""

    @staticmethod
    def forward(ctx, h, weight, in_place, i, j, b, value, batch):
        n, w, _ = weight.shape
        # A copy even at batch 1, where h (the bias, [n, w, 1]) expanded is already contiguous and .contiguous()
        # would return the parameter itself, which the index_add_ below would then change in place.
        out = h if in_place else h.expand(n, w, batch).clone(memory_format=torch.contiguous_format)
        cols = torch.arange(w, device=weight.device)
        rows = weight[i.unsqueeze(1), cols, j.unsqueeze(1)] * value.unsqueeze(1)  # [m, w_max]
        # index_add_ into the flat tensor adds in entry order (deterministic; index_put_ may not be)
        out.view(-1).index_add_(0, ((i.unsqueeze(1) * w + cols) * batch + b.unsqueeze(1)).view(-1), rows.view(-1))
        if in_place:
            ctx.mark_dirty(out)
        ctx.save_for_backward(i, j, b, value)
        ctx.in_place, ctx.weight_shape = in_place, weight.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        i, j, b, value = ctx.saved_tensors
        grad_h = grad if ctx.in_place else grad.sum(-1, keepdim=True)
        grad_w = None
        if ctx.needs_input_grad[1]:
            _, w, g = ctx.weight_shape
            cols = torch.arange(w, device=grad.device)
            rows = grad[i.unsqueeze(1), cols, b.unsqueeze(1)] * value.unsqueeze(1)  # [m, w_max]
            grad_w = grad.new_zeros(ctx.weight_shape)
            grad_w.view(-1).index_add_(0, ((i.unsqueeze(1) * w + cols) * g + j.unsqueeze(1)).view(-1), rows.view(-1))
        return grad_h, grad_w, None, None, None, None, None, None
