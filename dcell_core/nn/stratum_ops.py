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

    tensors: per bucket (bias [n, w, 1], weight [n, w, c] or None, inp [n, c, B] or None, dense_w [n, w, g] or
    None, dense_inp [n, g, B] or None), flattened, then flat_weight [P] or None."""

    @staticmethod
    def forward(ctx, rows: tuple[BucketRows, ...], batch: int | tuple[int, ...],
                sparse: tuple[torch.Tensor, ...] | None, *tensors):
        dtype = compute_dtype(tensors[0])
        flat_weight = tensors[-1]
        # `batch` an int: every bucket has that many columns and the result is [R_s, B]; a tuple: bucket q has
        # batch[q] columns and the result is flat, bucket q's [n, w, batch[q]] block after the blocks before it
        cols = (batch,) * len(rows) if isinstance(batch, int) else tuple(batch)
        starts = [0]
        for b, c in zip(rows, cols):
            starts.append(starts[-1] + b.n * b.w * c)
        out = torch.empty(starts[-1], dtype=dtype, device=tensors[0].device)
        for q, b in enumerate(rows):
            bias, weight, inp, dense_w, dense_inp = (_cast(t, dtype) for t in tensors[5 * q: 5 * q + 5])
            h = out[starts[q]: starts[q + 1]].view(b.n, b.w, cols[q])
            if weight is not None:
                torch.baddbmm(bias, weight, inp, out=h)
            else:
                h.copy_(bias.expand(b.n, b.w, cols[q]))
            if dense_w is not None:
                h.baddbmm_(dense_w, dense_inp)
        if sparse is not None:
            w_idx, o_idx, value = sparse
            add = _cast(flat_weight, dtype).index_select(0, w_idx)
            flat_add_(out, o_idx, add if value is None else add * value.to(dtype))
        ctx.rows, ctx.cols, ctx.starts, ctx.sparse, ctx.dtype = rows, cols, starts, sparse, dtype
        ctx.flat_shape = None if flat_weight is None else flat_weight.shape
        ctx.save_for_backward(*tensors[:-1])
        return out.view(starts[-1] // batch, batch) if isinstance(batch, int) else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.contiguous().view(-1)
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads: list[torch.Tensor | None] = [None] * (len(saved) + 1)
        for q, b in enumerate(ctx.rows):
            g = grad[ctx.starts[q]: ctx.starts[q + 1]].view(b.n, b.w, ctx.cols[q])
            k = 5 * q
            if needs[k]:
                grads[k] = g.sum(-1, keepdim=True)
            for wk in (k + 1, k + 3):  # (weight, inp) and (dense_w, dense_inp)
                weight, inp = _cast(saved[wk], ctx.dtype), _cast(saved[wk + 1], ctx.dtype)
                if weight is None:
                    continue
                if needs[wk]:
                    grads[wk] = torch.bmm(g, inp.transpose(1, 2))
                if needs[wk + 1]:
                    grads[wk + 1] = torch.bmm(weight.transpose(1, 2), g)
        if ctx.sparse is not None and needs[-1]:
            w_idx, o_idx, value = ctx.sparse
            flat_grad = grad.new_zeros(ctx.flat_shape)
            picked = grad.index_select(0, o_idx)
            flat_add_(flat_grad, w_idx, picked if value is None else picked * value.to(grad.dtype))
            grads[-1] = flat_grad
        return (None, None, None, *grads)


def heads_forward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, ...]
                  ) -> torch.Tensor:
    """Heads of every term of a stratum, [T_s, B] in bucket-slot order: head_bias + head_weight @ O_t, from the
    stratum output O [R_s, B]. params: per bucket (head_weight [n, 1, w], head_bias [n, 1, 1])."""
    dtype = compute_dtype(out_rows)
    batch = out_rows.shape[1]
    o = _cast(out_rows, dtype)
    heads = torch.empty(sum(b.n for b in rows), batch, dtype=dtype, device=o.device)
    first = 0
    for q, b in enumerate(rows):
        weight, bias = (_cast(t, dtype) for t in params[2 * q: 2 * q + 2])
        torch.baddbmm(bias, weight, o[b.start: b.start + b.n * b.w].view(b.n, b.w, batch),
                      out=heads[first: first + b.n].view(b.n, 1, batch))
        first += b.n
    return heads


def heads_backward(rows: tuple[BucketRows, ...], out_rows: torch.Tensor, params: tuple[torch.Tensor, ...],
                   grad: torch.Tensor, grad_target: torch.Tensor | None, needs: tuple[bool, ...],
                   ) -> list[torch.Tensor | None]:
    """Backward of `heads_forward`: adds the input gradient into `grad_target` [R_s, B] in place (when given)
    and returns the gradients of `params` (None where `needs` is False)."""
    dtype = compute_dtype(out_rows)
    o = _cast(out_rows, dtype)
    batch = o.shape[1]
    grad = _cast(grad.contiguous(), dtype)
    grads: list[torch.Tensor | None] = [None] * len(params)
    first = 0
    for q, b in enumerate(rows):
        g = grad[first: first + b.n].view(b.n, 1, batch)
        first += b.n
        weight = _cast(params[2 * q], dtype)
        if grad_target is not None:
            target = grad_target[b.start: b.start + b.n * b.w].view(b.n, b.w, batch)
            if target.dtype == dtype:
                target.baddbmm_(weight.transpose(1, 2), g)
            else:
                target.add_(torch.bmm(weight.transpose(1, 2), g))
        if needs[2 * q]:
            grads[2 * q] = torch.bmm(g, o[b.start: b.start + b.n * b.w].view(b.n, b.w, batch).transpose(1, 2))
        if needs[2 * q + 1]:
            grads[2 * q + 1] = g.sum(-1, keepdim=True)
    return grads
