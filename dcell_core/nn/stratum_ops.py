"""Whole-stratum autograd pieces: one autograd node per stratum for a linear layer; the heads' computation.

The buckets of a stratum write their outputs into one [R_s, B] tensor (rows of bucket q: its [n, w_max] block,
in bucket order, as in the activation buffer), so the element-wise work after them (activation, batch norm, the
copy into the activation buffer, the sparse gene columns) runs once per stratum instead of once per bucket, and
backward hands one [R_s, B] gradient back without concatenating per-bucket pieces. Inside, each bucket is one
batched matmul written in place (`out=`), and backward is the matmuls autograd would run for baddbmm.

Under autocast the functions compute in the autocast dtype (matmuls are on autocast's lower-precision list) and
autograd casts the returned gradients back to each input's dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import flat_add_


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

    `bias` [R_s] and `weight` (flat, or None) are the stratum's flat parameters: bucket q's bias is its rows
    [n, w, 1], its weight the next n * w * weight_cols[q] entries as [n, w, weight_cols[q]] (none where 0).
    Backward writes each bucket's part of their gradients into one flat gradient. `tensors`: per bucket (inp
    [n, c, B] or None, dense_w [n, w, g] or None, dense_inp [n, g, B] or None), flattened."""

    @staticmethod
    def forward(ctx, rows: tuple[BucketRows, ...], batch: int | tuple[int, ...],
                sparse: tuple[torch.Tensor, ...] | None, weight_cols: tuple[int, ...], bias: torch.Tensor,
                weight: torch.Tensor | None, flat_weight: torch.Tensor | None, *tensors):
        dtype = compute_dtype(bias)
        # `batch` an int: every bucket has that many columns and the result is [R_s, B]; a tuple: bucket q has
        # batch[q] columns and the result is flat, bucket q's [n, w, batch[q]] block after the blocks before it
        cols = (batch,) * len(rows) if isinstance(batch, int) else tuple(batch)
        starts, offsets = [0], [0]
        for b, c, k in zip(rows, cols, weight_cols):
            starts.append(starts[-1] + b.n * b.w * c)
            offsets.append(offsets[-1] + b.n * b.w * k)
        out = torch.empty(starts[-1], dtype=dtype, device=bias.device)
        bias_c, weight_c = _cast(bias, dtype), _cast(weight, dtype)
        for q, b in enumerate(rows):
            inp, dense_w, dense_inp = (_cast(t, dtype) for t in tensors[3 * q: 3 * q + 3])
            h = out[starts[q]: starts[q + 1]].view(b.n, b.w, cols[q])
            bias_q = bias_c[b.start: b.start + b.n * b.w].view(b.n, b.w, 1)
            if inp is not None:
                w_q = weight_c[offsets[q]: offsets[q + 1]].view(b.n, b.w, weight_cols[q])
                torch.baddbmm(bias_q, w_q, inp, out=h)
            else:
                h.copy_(bias_q.expand(b.n, b.w, cols[q]))
            if dense_w is not None:
                h.baddbmm_(dense_w, dense_inp)
        if sparse is not None:
            w_idx, o_idx, value = sparse
            add = _cast(flat_weight, dtype).index_select(0, w_idx)
            flat_add_(out, o_idx, add if value is None else add * value.to(dtype))
        ctx.rows, ctx.cols, ctx.starts, ctx.offsets, ctx.weight_cols = rows, cols, starts, offsets, weight_cols
        ctx.sparse, ctx.dtype, ctx.batch = sparse, dtype, batch
        ctx.flat_shape = None if flat_weight is None else flat_weight.shape
        ctx.save_for_backward(weight, *tensors)
        return out.view(starts[-1] // batch, batch) if isinstance(batch, int) else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.contiguous().view(-1)
        weight, *saved = ctx.saved_tensors
        weight = _cast(weight, ctx.dtype)
        needs_bias, needs_weight, needs_flat = ctx.needs_input_grad[4:7]
        needs = ctx.needs_input_grad[7:]
        grads: list[torch.Tensor | None] = [None] * len(saved)
        num_rows = sum(b.n * b.w for b in ctx.rows)
        bias_grad = weight_grad = None
        if needs_bias and isinstance(ctx.batch, int):
            bias_grad = grad.view(num_rows, ctx.batch).sum(1)
        elif needs_bias:
            bias_grad = grad.new_empty(num_rows)
        if needs_weight:
            weight_grad = grad.new_empty(ctx.offsets[-1])
        for q, b in enumerate(ctx.rows):
            g = grad[ctx.starts[q]: ctx.starts[q + 1]].view(b.n, b.w, ctx.cols[q])
            k = 3 * q
            if needs_bias and not isinstance(ctx.batch, int):
                torch.sum(g, -1, out=bias_grad[b.start: b.start + b.n * b.w].view(b.n, b.w))
            inp = _cast(saved[k], ctx.dtype)
            if inp is not None:
                w_q = weight[ctx.offsets[q]: ctx.offsets[q + 1]].view(b.n, b.w, ctx.weight_cols[q])
                if needs_weight:
                    torch.bmm(g, inp.transpose(1, 2), out=weight_grad[ctx.offsets[q]: ctx.offsets[q + 1]].view(
                        b.n, b.w, ctx.weight_cols[q]))
                if needs[k]:
                    grads[k] = torch.bmm(w_q.transpose(1, 2), g)
            elif needs_weight:
                weight_grad[ctx.offsets[q]: ctx.offsets[q + 1]].zero_()
            dense_w, dense_inp = _cast(saved[k + 1], ctx.dtype), _cast(saved[k + 2], ctx.dtype)
            if dense_w is not None:
                if needs[k + 1]:
                    grads[k + 1] = torch.bmm(g, dense_inp.transpose(1, 2))
                if needs[k + 2]:
                    grads[k + 2] = torch.bmm(dense_w.transpose(1, 2), g)
        flat_grad = None
        if ctx.sparse is not None and needs_flat:
            w_idx, o_idx, value = ctx.sparse
            flat_grad = grad.new_zeros(ctx.flat_shape)
            picked = grad.index_select(0, o_idx)
            flat_add_(flat_grad, w_idx, picked if value is None else picked * value.to(grad.dtype))
        return (None, None, None, None, bias_grad, weight_grad, flat_grad, *grads)


def heads_forward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]
                  ) -> torch.Tensor:
    """Heads of every term of a stratum, [T_s, B] in bucket-slot order: head_bias + head_weight @ O_t, from the
    stratum output O [R_s, B]. params: the stratum's flat (head_weight [R_s], head_bias [T_s]); bucket q's
    blocks are [n, 1, w] and [n, 1, 1]."""
    dtype = compute_dtype(out_rows)
    batch = out_rows.shape[1]
    o = _cast(out_rows, dtype)
    weight, bias = (_cast(t, dtype) for t in params)
    heads = torch.empty(len(bias), batch, dtype=dtype, device=o.device)
    first = 0
    for b in rows:
        torch.baddbmm(bias[first: first + b.n].view(b.n, 1, 1),
                      weight[b.start: b.start + b.n * b.w].view(b.n, 1, b.w),
                      o[b.start: b.start + b.n * b.w].view(b.n, b.w, batch),
                      out=heads[first: first + b.n].view(b.n, 1, batch))
        first += b.n
    return heads


def heads_backward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor],
                   grad: torch.Tensor, grad_target: torch.Tensor | None, needs: tuple[bool, ...],
                   ) -> list[torch.Tensor | None]:
    """Backward of `heads_forward`: adds the input gradient into `grad_target` [R_s, B] in place (when given)
    and returns the gradients of `params` (None where `needs` is False)."""
    dtype = compute_dtype(out_rows)
    o = _cast(out_rows, dtype)
    batch = o.shape[1]
    grad = _cast(grad.contiguous(), dtype)
    weight = _cast(params[0], dtype)
    weight_grad = grad.new_empty(len(weight)) if needs[0] else None
    first = 0
    for b in rows:
        g = grad[first: first + b.n].view(b.n, 1, batch)
        first += b.n
        w_q = weight[b.start: b.start + b.n * b.w].view(b.n, 1, b.w)
        if grad_target is not None:
            target = grad_target[b.start: b.start + b.n * b.w].view(b.n, b.w, batch)
            if target.dtype == dtype:
                target.baddbmm_(w_q.transpose(1, 2), g)
            else:
                target.add_(torch.bmm(w_q.transpose(1, 2), g))
        if needs[0]:
            torch.bmm(g, o[b.start: b.start + b.n * b.w].view(b.n, b.w, batch).transpose(1, 2),
                      out=weight_grad[b.start: b.start + b.n * b.w].view(b.n, 1, b.w))
    return [weight_grad, grad.sum(-1) if needs[1] else None]
