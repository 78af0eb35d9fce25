"""The stratum reads of the stratum-parallel model and the buffers they share (see stratum_dcell.py).

`ReadStratum` gathers a stratum's inputs from the activation buffer and computes the heads of the stratum
below; in backward it adds input gradients into one gradient buffer shared by all reads of a pass
(`BackwardState`) and hands finished rows back. Both buffers come from a `Workspace` reused between steps.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import flat_add_
from dcell_core.nn.stratum import rows_add_
from dcell_core.nn.stratum_ops import heads_backward, heads_forward


class Workspace:
    """One reusable [rows, B] tensor (the activation buffer, or the gradient buffer) per model. Fresh tensors this
    large are above glibc's mmap threshold, so every step would page-fault them in again (at batch 256 that was
    a fifth of the step once other work had run in between; see docs/performance.md). One owner at a time: a
    forward pass (the activation buffer) or a backward pass (the gradient buffer); a second concurrent owner, for
    example another thread, gets a fresh tensor. An owner that never releases (a graph freed before its backward
    finished) frees the workspace when it is garbage-collected (the owner is held by weak reference)."""

    def __init__(self):
        self.tensor: torch.Tensor | None = None
        self.owner: weakref.ref | None = None
        self.lock = threading.Lock()

    def __reduce__(self):  # a copied or pickled model starts with an empty workspace of its own
        return (Workspace, ())

    def acquire(self, owner, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        with self.lock:
            free = self.owner is None or self.owner() is None
            if free:
                self.owner = weakref.ref(owner)
                t = self.tensor
                if t is None or t.shape != (rows, cols) or t.dtype != dtype or t.device != device:
                    self.tensor = None  # drop the old one before allocating the new one
                    self.tensor = torch.empty(rows, cols, dtype=dtype, device=device)
                return self.tensor
        return torch.empty(rows, cols, dtype=dtype, device=device)

    def release(self, owner) -> None:
        with self.lock:
            if self.owner is not None and self.owner() is owner:
                self.owner = None


class BackwardState:
    """Shared by the stratum reads of one forward pass: the gradient buffer [rows, B], built on first use."""

    def __init__(self, num_rows: int, like: torch.Tensor, workspace: Workspace):
        # the gradient buffer takes the dtype and device of the activation buffer, i.e. of the genotypes `like`
        # (under autocast gradients may arrive in another dtype)
        self.num_rows, self.dtype, self.device, self.workspace = num_rows, like.dtype, like.device, workspace
        self.batch = like.shape[0]
        self.grad_buf: torch.Tensor | None = None
        self.last_reader = -1  # lowest stratum whose read has a gradient to hand back; frees the buffer

    def new_grad_buf(self, batch: int) -> torch.Tensor:
        self.grad_buf = self.workspace.acquire(self, self.num_rows, batch, self.dtype, self.device).zero_()
        return self.grad_buf

    def free_grad_buf(self) -> None:
        self.grad_buf = None
        self.workspace.release(self)


class ReadStratum(torch.autograd.Function):
    """Gather the inputs of one stratum from the activation buffer, one tensor per input kind in the order of
    `gathers` (`RowRead`s, stratum.py): the children inputs of all buckets [sum n * c_max, B], the gene inputs
    [sum n * g_max, B] (with `flat_reads`, `gathers` are index tensors of flat buffer positions instead and the
    results are 1-D: see perturbed.py); then, when `below` (the stratum whose output is `sources[0]`) is given,
    that stratum's heads [T, B]. The heads live here so that backward adds their input gradient in place into the
    shared gradient buffer before handing the rows back: the stratum output's gradient arrives whole, with no
    separate sum of two [R_s, B] gradients."""

    @staticmethod
    def forward(ctx, buf, gathers, flat_reads, gene_parts, genes_need_grad, state, stratum, spans, below, n_sources,
                *tensors):
        # `sources` (the tensors stored in the rows `spans`) are inputs so that autograd routes their gradients
        # through here; their values are already in `buf`. The rest of `tensors` are the heads' parameters.
        sources, head_params = tensors[:n_sources], tensors[n_sources:]
        ctx.gathers, ctx.state, ctx.stratum, ctx.spans, ctx.below = gathers, state, stratum, spans, below
        ctx.n_sources, ctx.flat_reads = n_sources, flat_reads
        ctx.set_materialize_grads(False)  # an input that gets no gradient adds nothing
        out = (tuple(buf.view(-1).index_select(0, index) for index in gathers) if flat_reads
               else tuple(buf.index_select(0, read.index) for read in gathers))
        if not genes_need_grad:
            ctx.mark_non_differentiable(*(o for o, is_gene in zip(out, gene_parts) if is_gene))
        if below is None:
            return out
        ctx.save_for_backward(sources[0], *head_params)
        return out + (heads_forward(below.rows, sources[0], head_params),)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        state = ctx.state
        n_gathers, n_sources = len(ctx.gathers), ctx.n_sources
        for index, grad in zip(ctx.gathers, grads):
            if grad is None:
                continue
            if state.grad_buf is None:
                state.new_grad_buf(state.batch)
            if ctx.flat_reads:
                flat_add_(state.grad_buf.view(-1), index, grad)
            else:
                rows_add_(state.grad_buf, index, grad)
        needs = ctx.needs_input_grad[10:]
        head_grads: list = []
        if ctx.below is not None:
            o, *params = ctx.saved_tensors
            grad_heads = grads[n_gathers]
            head_grads = [None] * len(params)
            if grad_heads is not None:
                target = None
                if needs[0]:
                    if state.grad_buf is None:
                        state.new_grad_buf(o.shape[1])
                    a = ctx.below.row_start
                    target = state.grad_buf[a: a + ctx.below.num_rows]
                head_grads = heads_backward(ctx.below.rows, o, tuple(params), grad_heads, target, needs[n_sources:])
        grad_buf = state.grad_buf  # None: no bucket input of this or a higher stratum got a gradient
        # views of the reused gradient buffer for stratum outputs (their backward makes new tensors from them);
        # copies for the gene region, whose gradient may end up stored (a leaf's .grad)
        # (a wild-type span, perturbed.py: the first shape[0] values of its rows)
        out = tuple((grad_buf[a:b].view(-1)[:shape[0]] if len(shape) == 1 else grad_buf[a:b].view(shape)
                     if ctx.stratum > 0 else grad_buf[a:b].reshape(shape).clone())
                    if need and grad_buf is not None else None
                    for (a, b, shape), need in zip(ctx.spans, needs[:n_sources]))
        if ctx.stratum == state.last_reader:
            state.free_grad_buf()
        return (None,) * 10 + out + tuple(head_grads)
