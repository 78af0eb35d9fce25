"""Stratum 0 in compact form: the entries where a term's pre-activation differs from its bias (see
`Stratum.compact_output`), and the expansion of the compact output to a dense [R, B] tensor."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import ragged_ranges


class Compact(NamedTuple):
    """Stratum 0's non-wild-type entries (see Stratum.compact_output): entry i is neuron rows[i] in sample
    flat[i] % B (flat = row * B + b, unique); gene-column element j adds gene_weight[w_idx[j]] (x values[j])
    into entry e_idx[j]."""
    rows: torch.Tensor
    flat: torch.Tensor
    e_idx: torch.Tensor
    w_idx: torch.Tensor
    values: torch.Tensor | None
    size: int


def compact_entries(row: torch.Tensor, length: torch.Tensor, b: torch.Tensor, w_idx: torch.Tensor,
                    values: torch.Tensor | None, B: int) -> Compact:
    """From stratum 0's input slots hit by a disrupted gene (first row of the term, L_t, sample) and their
    elements (in slot order, L_t each): the distinct (term, sample) pairs expanded to their L_t neurons."""
    pairs, inverse = torch.unique(row * B + b, return_inverse=True)  # sorted: by term row, then sample
    pair_len = torch.zeros_like(pairs).scatter_(0, inverse, length)
    pair_first = torch.cumsum(pair_len, 0) - pair_len
    size = int(pair_len.sum())
    rows = ragged_ranges(pairs // B, pair_len, 1, size)
    flat = ragged_ranges(pairs, pair_len, B, size)  # (row + r) * B + b
    e_idx = ragged_ranges(pair_first[inverse], length, 1, len(w_idx))  # slot element r -> its pair's entry r
    return Compact(rows, flat, e_idx, w_idx, values, size)


class ExpandScatter(torch.autograd.Function):
    """Dense [R, B] from a per-row value v0 [R] (every sample) overwritten at the entries (rows, flat) by e."""

    @staticmethod
    def forward(ctx, v0, e, rows, flat, batch):
        out = v0.unsqueeze(1).expand(len(v0), batch).contiguous()
        out.view(-1).index_copy_(0, flat, e.to(out.dtype))
        ctx.save_for_backward(rows, flat)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return (*expand_backward(ctx, grad), None, None, None)


class ExpandIntoBuffer(torch.autograd.Function):
    """As ExpandScatter, but written straight into `out` (the stratum's rows of the activation buffer, no fresh
    [R, B] tensor); returns a stand-in of that shape that carries the rows' gradient: the reads of the strata above
    hand the gradient of those buffer rows back for it (see reads.py)."""

    @staticmethod
    def forward(ctx, v0, e, rows, flat, out):
        out.copy_(v0.detach().unsqueeze(1).expand_as(out))
        out.view(-1).index_copy_(0, flat, e.detach().to(out.dtype))
        ctx.save_for_backward(rows, flat)
        return v0.new_zeros(1).expand(out.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return (*expand_backward(ctx, grad), None, None, None)


def expand_backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of (v0, e) of a dense [R, B] made from v0 with e at (rows, flat), the saved tensors."""
    rows, flat = ctx.saved_tensors
    grad_e = grad.reshape(-1).index_select(0, flat)
    return grad.sum(1).index_add_(0, rows, grad_e, alpha=-1), grad_e
