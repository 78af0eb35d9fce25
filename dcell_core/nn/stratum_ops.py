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


def _offsets(sizes) -> list[int]:
    out = [0]
    for size in sizes:
        out.append(out[-1] + size)
    return out


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
        cols = (batch,) * len(rows) if isinstance(batch, int) else tuple(batch)
        dense_cols = dense_cols if dense_w is not None else (0,) * len(rows)
        layout = (_offsets(b.n * b.w * c for b, c in zip(rows, cols)),  # output
                  _offsets(b.n * b.w * k for b, k in zip(rows, weight_cols)),  # weight
                  _offsets(b.n * k * c for b, k, c in zip(rows, weight_cols, cols)),  # inp
                  _offsets(b.n * b.w * g for b, g in zip(rows, dense_cols)),  # dense_w
                  _offsets(b.n * g * c for b, g, c in zip(rows, dense_cols, cols)))  # dense_inp
        for t, offsets, name in ((weight, layout[1], "weight"), (inp, layout[2], "inp"),
                                 (dense_w, layout[3], "dense_w"), (dense_inp, layout[4], "dense_inp")):
            if (0 if t is None else t.numel()) != offsets[-1]:
                raise ValueError(f"StratumLinear: {name} has {0 if t is None else t.numel()} elements, the "
                                 f"buckets' blocks {offsets[-1]}")
        out = torch.empty(layout[0][-1], dtype=dtype, device=bias.device)
        bias_c = _cast(bias, dtype)
        weight_c, inp_c, dense_w_c, dense_inp_c = (None if t is None else _cast(t, dtype).reshape(-1)
                                                   for t in (weight, inp, dense_w, dense_inp))
        for q, b in enumerate(rows):
            h = _block(out, layout[0], q, b.n, b.w, cols[q])
            bias_q = bias_c[b.start: b.start + b.n * b.w].view(b.n, b.w, 1)
            if weight_cols[q]:
                torch.baddbmm(bias_q, _block(weight_c, layout[1], q, b.n, b.w, weight_cols[q]),
                              _block(inp_c, layout[2], q, b.n, weight_cols[q], cols[q]), out=h)
            else:
                h.copy_(bias_q.expand(b.n, b.w, cols[q]))
            if dense_cols[q]:
                h.baddbmm_(_block(dense_w_c, layout[3], q, b.n, b.w, dense_cols[q]),
                           _block(dense_inp_c, layout[4], q, b.n, dense_cols[q], cols[q]))
        if sparse is not None:
            w_idx, o_idx, value = sparse
            add = _cast(flat_weight, dtype).index_select(0, w_idx)
            flat_add_(out, o_idx, add if value is None else add * value.to(dtype))
        ctx.rows, ctx.cols, ctx.layout, ctx.weight_cols, ctx.dense_cols = rows, cols, layout, weight_cols, dense_cols
        ctx.sparse, ctx.dtype, ctx.batch = sparse, dtype, batch
        ctx.flat_shape = None if flat_weight is None else flat_weight.shape
        ctx.save_for_backward(weight, inp, dense_w, dense_inp)
        return out.view(layout[0][-1] // batch, batch) if isinstance(batch, int) else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.contiguous().view(-1)
        weight, inp, dense_w, dense_inp = (None if t is None else _cast(t, ctx.dtype).reshape(-1)
                                           for t in ctx.saved_tensors)
        shapes = [None if t is None else t.shape for t in ctx.saved_tensors]
        needs_bias, needs_weight, needs_inp, needs_dw, needs_di, needs_flat = ctx.needs_input_grad[5:]
        layout, cols, batch = ctx.layout, ctx.cols, ctx.batch
        num_rows = sum(b.n * b.w for b in ctx.rows)
        grads: list[torch.Tensor | None] = [None] * 4  # weight, inp, dense_w, dense_inp
        for i, needed in enumerate((needs_weight, needs_inp, needs_dw, needs_di)):
            if needed:
                grads[i] = grad.new_empty(layout[i + 1][-1])
        bias_grad = None
        if needs_bias and isinstance(batch, int):
            bias_grad = grad.view(num_rows, batch).sum(1)
        elif needs_bias:
            bias_grad = grad.new_empty(num_rows)
        for q, b in enumerate(ctx.rows):
            g = _block(grad, layout[0], q, b.n, b.w, cols[q])
            if needs_bias and not isinstance(batch, int):
                torch.sum(g, -1, out=bias_grad[b.start: b.start + b.n * b.w].view(b.n, b.w))
            for i, (k, w_t, i_t) in enumerate(((ctx.weight_cols[q], weight, inp),
                                               (ctx.dense_cols[q], dense_w, dense_inp))):
                if not k:
                    continue
                if grads[2 * i] is not None:
                    torch.bmm(g, _block(i_t, layout[2 * i + 2], q, b.n, k, cols[q]).transpose(1, 2),
                              out=_block(grads[2 * i], layout[2 * i + 1], q, b.n, b.w, k))
                if grads[2 * i + 1] is not None:
                    torch.bmm(_block(w_t, layout[2 * i + 1], q, b.n, b.w, k).transpose(1, 2), g,
                              out=_block(grads[2 * i + 1], layout[2 * i + 2], q, b.n, k, cols[q]))
        grads = [None if t is None else t.view(shape) for t, shape in zip(grads, shapes)]
        flat_grad = None
        if ctx.sparse is not None and needs_flat:
            w_idx, o_idx, value = ctx.sparse
            flat_grad = grad.new_zeros(ctx.flat_shape)
            picked = grad.index_select(0, o_idx)
            flat_add_(flat_grad, w_idx, picked if value is None else picked * value.to(grad.dtype))
        return (None, None, None, None, None, bias_grad, *grads, flat_grad)


def _block(flat: torch.Tensor, offsets: list[int], q: int, n: int, rows: int, cols: int) -> torch.Tensor:
    """Bucket q's [n, rows, cols] block of a flat tensor whose blocks start at `offsets`."""
    return flat[offsets[q]: offsets[q + 1]].view(n, rows, cols)


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
