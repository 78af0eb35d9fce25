"""The stratum reads of the stratum-parallel model and the buffers they share (see stratum_dcell.py).

`ReadStratum` gathers a stratum's inputs from the activation buffer and computes the heads of the stratum
below; in backward it adds input gradients into one gradient buffer shared by all reads of a pass
(`BackwardState`) and hands finished rows back. `ReadLinear` does the same for a stratum that reads only its
children's rows, fused with its first layer. Both buffers come from a `Workspace` reused between steps.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch.autograd.function import once_differentiable

from dcell_core.nn.native import ops
from dcell_core.nn.stratum import RowRead, rows_add_
from dcell_core.nn.stratum_ops import GeneSlots, heads_backward, heads_forward, rows_lists

# Bytes of gathered input rows per chunk of the fused read (`ReadLinear`): about a core's L2 cache. At batch 256 on
# yeast_go's direct basis, 1 MiB chunks ran the fused read and first layer of strata 2-15 in 0.097 s against
# 0.114 s for the gather and matmuls over whole buckets (docs/performance.md); 256 KiB chunks were no faster than
# that.
READ_CHUNK_BYTES = 1 << 20


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
        self.generation = 0  # how many times the shared tensor was handed out

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
                self.generation += 1
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
        # the activation buffer and its workspace; `buf_users`: fused reads (ReadLinear) whose backward reads it
        # again, so it is kept until the last of them has run (forward releases it when there are none)
        self.buf: torch.Tensor | None = None
        self.buf_workspace: Workspace | None = None
        self.buf_generation, self.buf_users = 0, 0

    def acquire_buf(self, workspace: Workspace, rows: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        self.buf = workspace.acquire(self, rows, batch, like.dtype, like.device)
        self.buf_workspace, self.buf_generation = workspace, workspace.generation
        return self.buf

    def check_buf(self) -> None:
        """Raise if the activation buffer was handed to a later forward pass (a retained graph's second backward
        after another forward): its rows are no longer this pass's."""
        ws = self.buf_workspace
        if self.buf is ws.tensor and ws.generation != self.buf_generation:
            raise RuntimeError("backward of a stratum-parallel DCell pass whose activation buffer a later forward pass "
                               "has overwritten (a graph kept with retain_graph=True, run backward again after "
                               "another forward): run backward before the next forward pass")

    def release_buf(self) -> None:
        if self.buf_workspace is not None:
            self.buf_workspace.release(self)

    def new_grad_buf(self, batch: int) -> torch.Tensor:
        self.grad_buf = self.workspace.acquire(self, self.num_rows, batch, self.dtype, self.device).zero_()
        return self.grad_buf

    def free_grad_buf(self) -> None:
        self.grad_buf = None
        self.workspace.release(self)


class ReadStratum(torch.autograd.Function):
    """Gather the inputs of one stratum from the activation buffer, one tensor per input kind in the order of
    `gathers` (`RowRead`s, stratum.py): the children inputs of all buckets [sum n * c_max, B], the gene inputs
    [sum n * g_max, B] (with `flat_reads`, `gathers` are perturbed.PairRead instead and the results are 1-D);
    then, when `below` (the stratum whose output is `sources[0]`) is given, that stratum's heads [T, B]. The
    heads live here so that backward adds their input gradient in place into the shared gradient buffer before
    handing the rows back: the stratum output's gradient arrives whole, with no separate sum of two [R_s, B]
    gradients."""

    @staticmethod
    def forward(ctx, buf, gathers, flat_reads, gene_parts, genes_need_grad, state, stratum, spans, below, n_sources,
                *tensors):
        # `sources` (the tensors stored in the rows `spans`) are inputs so that autograd routes their gradients
        # through here; their values are already in `buf`. The rest of `tensors` are the heads' parameters.
        sources, head_params = tensors[:n_sources], tensors[n_sources:]
        ctx.gathers, ctx.state, ctx.stratum, ctx.spans, ctx.below = gathers, state, stratum, spans, below
        ctx.n_sources, ctx.flat_reads = n_sources, flat_reads
        ctx.set_materialize_grads(False)  # an input that gets no gradient adds nothing
        out = (tuple(read.gather(buf) for read in gathers) if flat_reads
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
                index.add_back_(state.grad_buf, grad)
            else:
                rows_add_(state.grad_buf, index, grad)
        needs = ctx.needs_input_grad[10:]
        head_grads: list = []
        if ctx.below is not None:
            o, *params = ctx.saved_tensors
            head_grads = below_heads_backward(state, ctx.below, o, params, grads[n_gathers], needs[0],
                                              needs[n_sources:])
        out = source_grads(state, ctx.spans, ctx.stratum, needs[:n_sources])
        return (None,) * 10 + out + tuple(head_grads)


def _gene_args(sparse: GeneSlots | None, gene_weight: torch.Tensor | None, dtype: torch.dtype) -> tuple:
    """The (slots, gene weights, values) arguments of csrc read_linear_*: all None without gene slots."""
    if sparse is None:
        return None, None, None
    value = None if sparse.value is None else sparse.value.to(dtype)
    return sparse.table, gene_weight.detach(), value


def below_heads_backward(state: BackwardState, below, o: torch.Tensor, params, grad_heads: torch.Tensor | None,
                         needs_source: bool, needs_params) -> list:
    """Backward of the heads of the stratum below (output `o`) computed by a read: their input gradient added in
    place into that stratum's rows of the gradient buffer (made if need be), their parameters' gradients
    returned."""
    if grad_heads is None:
        return [None] * len(params)
    target = None
    if needs_source:
        if state.grad_buf is None:
            state.new_grad_buf(o.shape[1])
        target = state.grad_buf[below.row_start: below.row_start + below.num_rows]
    return heads_backward(below.rows, o, tuple(params), grad_heads, target, needs_params)


def source_grads(state: BackwardState, spans, stratum: int, needs) -> tuple:
    """The gradients a read hands back for its sources (the rows `spans` of the gradient buffer), and the gradient
    buffer freed after the lowest read: views of the reused buffer for stratum outputs (their backward makes new
    tensors from them); copies for the gene region, whose gradient may end up stored (a leaf's .grad); a wild-type
    span (perturbed.py): the first shape[0] values of its rows."""
    grad_buf = state.grad_buf  # None: no bucket input of this or a higher stratum got a gradient
    out = tuple((grad_buf[a:b].view(-1)[:shape[0]] if len(shape) == 1 else grad_buf[a:b].view(shape)
                 if stratum > 0 else grad_buf[a:b].reshape(shape).clone())
                if need and grad_buf is not None else None
                for (a, b, shape), need in zip(spans, needs))
    if stratum == state.last_reader:
        state.free_grad_buf()
    return out


def cpu_kernel_input(t: torch.Tensor) -> bool:
    """Whether the model's CPU kernels take `t`: a float32/float64 CPU tensor, outside autocast (where ops run in
    the tensors' dtype)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")


def fuses_read(buf: torch.Tensor, groups: list[bool]) -> bool:
    """Whether a stratum reading the input kinds `groups` (is gene, in read order) takes `ReadLinear`: it reads
    only its children's rows, from a buffer the CPU kernels take."""
    return groups == [False] and cpu_kernel_input(buf)


class ReadLinear(torch.autograd.Function):
    """`ReadStratum` of a stratum that reads only its children's rows (one `RowRead`; the sparse gene path),
    fused with its first layer (`StratumLinear`, the gene columns from the nonzero genotype entries `sparse`, a
    `GeneSlots`): returns the pre-activation [R_s, B] and, when `below` is given, the heads of the stratum below.
    The gathered inputs ([sum n * c_max, B], at batch 256 several times the stratum's output) are never made whole:
    each bucket runs in chunks of terms whose gathered rows fit in READ_CHUNK_BYTES, gathered and multiplied while
    in cache, the chunk's gene columns added then too (csrc read_linear_forward); backward gathers each chunk again
    from the activation buffer for the weight gradient, takes the gene weights' gradient from the chunk's output
    gradient and adds the chunk's input gradient into the shared gradient buffer, all from cache. The activation
    buffer is therefore kept until the last such backward has run (`BackwardState.buf_users`). Results equal those
    of ReadStratum + StratumLinear; the row additions are made in the same order as `rows_add_`'s, the gene
    columns' in that of `add_gene_columns`."""

    @staticmethod
    def forward(ctx, buf, read: RowRead, state, stratum_index, spans, below, stratum, sparse, grad_enabled, n_sources,
                *tensors):
        sources = tensors[:n_sources]
        n_heads = 0 if below is None else 2
        head_params = tensors[n_sources:n_sources + n_heads]
        bias, weight, gene_weight = tensors[n_sources + n_heads:]
        ctx.set_materialize_grads(False)
        ctx.read, ctx.state, ctx.stratum_index, ctx.spans, ctx.below, ctx.stratum = (read, state, stratum_index,
                                                                                      spans, below, stratum)
        ctx.n_sources, ctx.sparse, ctx.chunk = n_sources, sparse, READ_CHUNK_BYTES // buf.element_size()
        n, w, start = rows_lists(stratum.rows)
        genes = _gene_args(sparse, gene_weight, buf.dtype)
        z = ops().read_linear_forward(buf, read.index, bias.detach(), weight.detach(), n, w,
                                      list(stratum.weight_cols), start, ctx.chunk, *genes)
        ctx.save_for_backward(weight, *(sources[:1] if below is not None else ()), *head_params)
        # (inside forward, grad mode is off: the caller says whether it was on)
        if grad_enabled and any(t is not None and t.requires_grad for t in tensors):
            state.buf_users += 1
            ctx.counted = True
        else:
            ctx.counted = False
        if below is None:
            return z
        return z, heads_forward(below.rows, sources[0], head_params)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z, grad_heads=None):
        state = ctx.state
        needs = ctx.needs_input_grad[10:]
        n_sources = ctx.n_sources
        n_heads = 0 if ctx.below is None else 2
        need_bias, need_weight, need_genes = needs[n_sources + n_heads:]
        weight, *rest = ctx.saved_tensors
        bias_grad = weight_grad = gene_grad = None
        if grad_z is not None:
            state.check_buf()
            grad_z = grad_z.contiguous()
            target = None
            if any(needs[:n_sources]):
                target = state.grad_buf if state.grad_buf is not None else state.new_grad_buf(state.batch)
            n, w, start = rows_lists(ctx.stratum.rows)
            genes = _gene_args(ctx.sparse if need_genes else None, ctx.stratum.gene_weight, grad_z.dtype)
            bias_grad, weight_grad, gene_grad = ops().read_linear_backward(
                grad_z, state.buf, *ctx.read, weight.detach(), target, n, w, list(ctx.stratum.weight_cols), start,
                bool(need_bias), bool(need_weight), ctx.chunk, *genes)
        if ctx.counted:
            state.buf_users -= 1
            if state.buf_users == 0:
                state.release_buf()
        head_grads: list = [None] * n_heads
        if ctx.below is not None:
            o, *params = rest
            head_grads = below_heads_backward(state, ctx.below, o, params, grad_heads, needs[0],
                                              needs[n_sources:n_sources + n_heads])
        out = source_grads(state, ctx.spans, ctx.stratum_index, needs[:n_sources])
        return (None,) * 10 + out + tuple(head_grads) + (bias_grad, weight_grad, gene_grad)
