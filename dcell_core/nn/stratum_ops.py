"""Whole-stratum autograd pieces: one autograd node per stratum for a linear layer; the heads' computation.

The buckets of a stratum write their outputs into one [R_s, B] tensor (rows of bucket q: its [n, w_max] block,
in bucket order, as in the activation buffer), so the element-wise work after them (activation, batch norm, the
copy into the activation buffer, the sparse gene columns) runs once per stratum instead of once per bucket, and
backward hands one [R_s, B] gradient back without concatenating per-bucket pieces. Inside, each bucket is one
batched matmul written in place (`out=`), and backward is the matmuls autograd would run for baddbmm. The loops
over buckets run in C++ (csrc/stratum_ops.cpp, native.py): the same ATen ops on the same views, without Python's
cost per view and call.

Under autocast the functions compute in the autocast dtype (matmuls are on autocast's lower-precision list) and
autograd casts the returned gradients back to each input's dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS, flat_add_, ragged_ranges
from dcell_core.nn.native import ops


class BucketRows(NamedTuple):
    start: int  # first row of the bucket's block in the stratum tensor
    n: int  # terms
    w: int  # w_max


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(like.device.type):
        return torch.get_autocast_dtype(like.device.type)
    return like.dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


class StratumLinear(torch.autograd.Function):
    """H [R_s, B]: for every bucket q, H_q = bias_q + weight_q @ inp_q (+ dense_w_q @ dense_inp_q), all [n, w, .]
    batched over its terms; plus, with `sparse`, the gene columns applied from the nonzero genotype entries:
    H.view(-1)[o_idx[e]] += flat_weight[w_idx[e]] * value[e] for every element e (added in element order by
    `flat_add_`, deterministic; value None: all ones). Exact for any input values; its cost grows with the
    entries, not with the gene columns.

    Every tensor holds the blocks of all buckets one after another (a bucket with 0 columns has no block):
    `bias` [R_s] (bucket q: its rows, [n, w, 1]); `weight` flat, [n, w, k_q] with k_q = weight_cols[q]; `inp`
    (read in one gather, or the stratum tensor below) [n, k_q, c_q] with c_q the bucket's batch columns; with
    `dense_cols` (g_q), `dense_w` [n, w, g_q] and `dense_inp` [n, g_q, c_q]. Backward writes each bucket's part
    of every gradient into one tensor per input."""

    @staticmethod
    def forward(ctx, rows: tuple[BucketRows, ...], batch: int | tuple[int, ...],
                sparse: tuple[torch.Tensor, ...] | None, weight_cols: tuple[int, ...],
                dense_cols: tuple[int, ...] | None, bias: torch.Tensor, weight: torch.Tensor | None,
                inp: torch.Tensor | None, dense_w: torch.Tensor | None, dense_inp: torch.Tensor | None,
                flat_weight: torch.Tensor | None):
        dtype = compute_dtype(bias)
        # `batch` an int: every bucket has that many columns and the result is [R_s, B]; a tuple: bucket q has
        # batch[q] columns and the result is flat, bucket q's [n, w, batch[q]] block after the blocks before it
        cols = [batch] * len(rows) if isinstance(batch, int) else list(batch)
        dense_cols = list(dense_cols) if dense_w is not None else [0] * len(rows)
        shape = rows_lists(rows)
        out = ops().linear_forward(_cast(bias, dtype), *(None if t is None else _cast(t, dtype).reshape(-1)
                                                         for t in (weight, inp, dense_w, dense_inp)),
                                   shape[0], shape[1], list(weight_cols), dense_cols, cols, shape[2])
        if sparse is not None:
            add_gene_columns(out, sparse, _cast(flat_weight, dtype))
        ctx.shape, ctx.cols, ctx.weight_cols, ctx.dense_cols = shape, cols, list(weight_cols), dense_cols
        ctx.sparse, ctx.dtype, ctx.batch = sparse, dtype, batch
        ctx.flat_shape = None if flat_weight is None else flat_weight.shape
        ctx.save_for_backward(weight, inp, dense_w, dense_inp)
        return out.view(-1, batch) if isinstance(batch, int) else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.contiguous().view(-1)
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[5:]
        n, w, start = ctx.shape
        grads = ops().linear_backward(grad, *(None if t is None else _cast(t, ctx.dtype).reshape(-1) for t in saved),
                                      n, w, ctx.weight_cols, ctx.dense_cols, ctx.cols, start,
                                      isinstance(ctx.batch, int), list(needs[:5]))
        bias_grad = grads[0]
        grads = [None if g is None else g.view(t.shape) for g, t in zip(grads[1:], saved)]
        flat_grad = gene_columns_grad(grad, ctx.sparse, ctx.flat_shape) if ctx.sparse is not None and needs[5] else None
        return (None, None, None, None, None, bias_grad, *grads, flat_grad)


class GeneSlots:
    """The sparse gene columns of one stratum's first layer for one batch, per input slot: slot j is the nonzero
    genotype entry x[b, g] (value[j]; None: every value is 1) at a term t of the stratum with gene g, whose column
    of t's [L_t, G_t] gene block starts at col[j] of the stratum's flat gene weights and whose rows start at row[j]
    of the stratum tensor: stratum[row + r, b] += gene_weight[col + r] * value for r < length[j] = L_t. Sorted by
    row (ties in genotype-entry order). The fused read applies them per chunk of rows (csrc read_linear_*);
    `elements()` gives the per-element form the other paths take."""

    def __init__(self, row: torch.Tensor, length: torch.Tensor, col: torch.Tensor, b: torch.Tensor,
                 value: torch.Tensor | None, batch: int):
        self.table = torch.stack([row, length, col, b], 1)  # [M, 4], the form csrc read_linear_* take
        self.value, self.batch = value, batch
        self._elements = None

    def weight_elements(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(w_idx, value or None) per element, in slot order: the gene weight and genotype value each element
        adds (stratum 0's compact form needs only these)."""
        _, length, col, _ = self.table.unbind(1)
        total = int(length.sum())
        w_idx = ragged_ranges(col, length, 1, total)
        value = None if self.value is None else torch.repeat_interleave(self.value, length, output_size=total)
        return w_idx, value

    def elements(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(w_idx, o_idx, value or None) per element, in slot order: out.view(-1)[o_idx[e]] +=
        flat_weight[w_idx[e]] * value[e] (`add_gene_columns`)."""
        if self._elements is None:
            row, length, _, b = self.table.unbind(1)
            w_idx, value = self.weight_elements()
            o_idx = ragged_ranges(row * self.batch + b, length, self.batch, len(w_idx))
            self._elements = (w_idx, o_idx, value)
        return self._elements


def add_gene_columns(out: torch.Tensor, sparse: tuple, flat_weight: torch.Tensor) -> None:
    """The sparse gene columns of a first layer, added in place into the flat output `out`: out[o_idx[e]] +=
    flat_weight[w_idx[e]] * value[e] for every element e of `sparse` = (w_idx, o_idx, value or None: all ones), in
    element order (`flat_add_`, deterministic)."""
    w_idx, o_idx, value = sparse
    add = flat_weight.index_select(0, w_idx)
    flat_add_(out, o_idx, add if value is None else add * value.to(out.dtype))


def gene_columns_grad(grad: torch.Tensor, sparse: tuple, shape: torch.Size) -> torch.Tensor:
    """Gradient of the flat gene weights (`shape`) of `add_gene_columns` from the flat output gradient `grad`."""
    w_idx, o_idx, value = sparse
    flat_grad = grad.new_zeros(shape)
    picked = grad.index_select(0, o_idx)
    flat_add_(flat_grad, w_idx, picked if value is None else picked * value.to(grad.dtype))
    return flat_grad


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                         var: torch.Tensor, batch: int) -> None:
    """Batch norm's running statistics after a training batch, as F.batch_norm updates them: momentum
    BN_MOMENTUM, the batch's biased variance `var` made unbiased."""
    with torch.no_grad():
        running_mean.mul_(1 - BN_MOMENTUM).add_(mean.detach(), alpha=BN_MOMENTUM)
        running_var.mul_(1 - BN_MOMENTUM).add_(var.detach(), alpha=BN_MOMENTUM * batch / (batch - 1))


def rows_lists(rows: tuple[BucketRows, ...]) -> tuple[list[int], list[int], list[int]]:
    """The buckets' (n, w_max, first row) as three lists, the form the C++ ops take."""
    return [b.n for b in rows], [b.w for b in rows], [b.start for b in rows]


def heads_forward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]
                  ) -> torch.Tensor:
    """Heads of every term of a stratum, [T_s, B] in bucket-slot order: head_bias + head_weight @ O_t, from the
    stratum output O [R_s, B]. params: the stratum's flat (head_weight [R_s], head_bias [T_s]); bucket q's
    blocks are [n, 1, w] and [n, 1, 1]."""
    dtype = compute_dtype(out_rows)
    weight, bias = (_cast(t, dtype) for t in params)
    return ops().heads_forward(_cast(out_rows, dtype), weight, bias, *rows_lists(rows))


def heads_backward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor],
                   grad: torch.Tensor, grad_target: torch.Tensor | None, needs: tuple[bool, ...],
                   ) -> list[torch.Tensor | None]:
    """Backward of `heads_forward`: adds the input gradient into `grad_target` [R_s, B] in place (when given)
    and returns the gradients of `params` (None where `needs` is False)."""
    dtype = compute_dtype(out_rows)
    grad = _cast(grad.contiguous(), dtype)
    weight_grad = ops().heads_backward(_cast(out_rows, dtype), _cast(params[0], dtype), grad, grad_target,
                                       bool(needs[0]), *rows_lists(rows))
    return [weight_grad, grad.sum(-1) if needs[1] else None]


class TanhNorm(torch.autograd.Function):
    """batch_norm(tanh(z)) per row of z [R_s, B] over the batch, in training (the act_norm order with tanh), on
    contiguous float32/float64 CPU tensors: csrc tanh_norm_forward / tanh_norm_backward, one pass per row block
    where tanh, batch norm's two passes and the copy into the activation buffer each read the whole tensor. The
    running statistics are updated as F.batch_norm updates them (the unbiased variance).

    With `rows` (the stratum's buckets) and the head parameters, also returns the stratum's heads [T_s, B]
    (bucket-slot order, as `heads_forward`), summed from each term's rows while they are in cache, and backward
    adds their input gradient to each row's on the fly: no separate pass over the stratum's output reads it for
    the heads, nor adds their gradient into the gradient buffer. The stratum's output is then read only from the
    activation buffer, so with `dest` (its rows there) it is written there only and the tensor returned for it is
    a stand-in of its shape (zeros) that carries its gradient, as compact.ExpandIntoBuffer's."""

    @staticmethod
    def forward(ctx, z, gain, shift, running_mean, running_var, dest, rows, head_weight, head_bias):
        heads = rows is not None
        if dest is not None and not heads:
            raise ValueError("TanhNorm: the output is written only into `dest` when the heads are computed here")
        n, w, start = rows_lists(rows) if heads else ([], [], [])
        h, t, mean, invstd, var, head_out = ops().tanh_norm_forward(
            z.contiguous(), gain.detach(), shift.detach(), NORM_EPS, dest,
            head_weight.detach() if heads else None, head_bias.detach() if heads else None, n, w, start)
        update_running_stats(running_mean, running_var, mean, var, z.shape[1])
        ctx.save_for_backward(t, mean, invstd, gain, shift, *((head_weight, head_bias) if heads else ()))
        ctx.rows = rows
        ctx.set_materialize_grads(False)
        if not heads:
            return h
        return (h if dest is None else z.new_zeros(1).expand(z.shape)), head_out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_heads=None):
        t, mean, invstd, gain, shift, *head_params = ctx.saved_tensors
        heads = ctx.rows is not None
        if grad is None and (not heads or grad_heads is None):
            return (None,) * 9
        if heads and grad_heads is None:
            grad_heads = torch.zeros(len(head_params[1]), t.shape[1], dtype=t.dtype)
        n, w, start = rows_lists(ctx.rows) if heads else ([], [], [])
        dz, dgain, dshift, dhead = ops().tanh_norm_backward(
            None if grad is None else grad.contiguous(), t, mean, invstd, gain.detach(), shift.detach(),
            grad_heads.contiguous() if heads else None, *(p.detach() for p in head_params) if heads else (None, None),
            n, w, start)
        needs = ctx.needs_input_grad
        head_grads = (dhead if needs[7] else None, grad_heads.sum(-1) if needs[8] else None) if heads else (None,) * 2
        return (dz, dgain if needs[1] else None, dshift if needs[2] else None, None, None, None, None, *head_grads)


class PairTanhNorm(torch.autograd.Function):
    """batch_norm(tanh(.)) in training of a stratum in perturbation form (perturbed.py), from its flat pre-activations
    z (the wild type and the perturbed samples of every row, `StratumPairs`), on contiguous float32/float64 CPU
    tensors: csrc pair_tanh_norm_forward / _backward, one task per term, its rows' statistics weighted as
    `Stratum.compact_finish` weights them, its head summed as `Stratum.compact_heads` sums it. The dense output is
    written into `dest` (the stratum's rows of the activation buffer) only: returns a stand-in of its shape (zeros,
    as compact.ExpandIntoBuffer's) that carries its gradient, the wild-type output [R_s] (read by the stratum above
    when that is in the form too) and the heads [T_s, B]. `terms` [6, T_s]: per term its first row, width (the
    bucket's), real rows, perturbed samples m, first of them in `samp`, columns of its rows in z; `zw` [R_s]: each
    row's wild-type column in z."""

    @staticmethod
    def forward(ctx, z, gain, shift, running_mean, running_var, head_weight, head_bias, terms, samp, zw, dest):
        wild, mean, invstd, var, heads, t = ops().pair_tanh_norm_forward(
            z.contiguous(), terms, samp, zw, gain.detach(), shift.detach(), head_weight.detach(), head_bias.detach(),
            NORM_EPS, dest)
        B = dest.shape[1]
        update_running_stats(running_mean, running_var, mean, var, B)
        ctx.save_for_backward(t, mean, invstd, gain, shift, head_weight)
        ctx.terms, ctx.samp, ctx.zw, ctx.batch = terms, samp, zw, B
        ctx.set_materialize_grads(False)
        return z.new_zeros(1).expand(dest.shape), wild, heads

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_wild, grad_heads):
        t, mean, invstd, gain, shift, head_weight = ctx.saved_tensors
        if grad is None and grad_wild is None and grad_heads is None:
            return (None,) * 11
        dz, dgain, dshift, dhw, dhb = ops().pair_tanh_norm_backward(
            *(None if g is None else g.contiguous() for g in (grad, grad_wild, grad_heads)), t,
            ctx.terms, ctx.samp, ctx.zw, mean, invstd, gain.detach(), shift.detach(), head_weight.detach(),
            ctx.batch)
        needs = ctx.needs_input_grad
        return (dz, dgain if needs[1] else None, dshift if needs[2] else None, None, None,
                dhw if needs[5] else None, dhb if needs[6] else None, None, None, None, None)
