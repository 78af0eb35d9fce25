"""The stratum-parallel DCell: every stratum is one gather plus a few batched ops per shape bucket.

Forward keeps all term outputs in one neuron-major activation buffer [rows, B] (layout in plan.py). Stratum s
reads its whole input with one index_select per bucket and input part (`_ReadStratum`; a bucket's children part
and gene part are read separately, and the gene part is marked non-differentiable unless the gene region needs a
gradient, so no input gradient is computed or scattered for gene columns; with binary genotypes that need no
gradient the gene part is not read at all: the gene columns are applied from the nonzero genotype entries).
`StratumLinear` (stratum_ops.py) runs the first linear layer of all its buckets as padded batched matmuls into one
[R_s, B] tensor, activation and batch norm run on that tensor once per stratum, the stratum's output is copied
into the buffer for the strata above, and the next stratum's read also computes this stratum's heads. No Python
loop runs over terms or samples; the op count grows with strata and buckets. The activation buffer and the
gradient buffer are reused from step to step (`_Workspace`).

Gene columns of the first layer live unpadded in one flat parameter per stratum (`strata.{s}.gene_weight`: for
each term, in bucket-slot order, its [L_t, G_t] block row-major); the dense path (embeddings, attention, or
`sparse_gene_inputs=False`) scatters them into padded [n, w_max, g_max] blocks each step.

Backward of the buffer: instead of autograd re-materializing a [rows, B] gradient per stratum, every stratum's
read adds its input gradient into one shared gradient buffer (index_add_) and hands the finished rows of the
stratum below back to autograd. Stratum s-1 is read only by strata >= s, and autograd runs the reads top-down
(read s needs stratum s's gradient, which needs read s+1), so when read s runs, every contribution to
stratum s-1's rows is already in the buffer.
"""
from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from dcell_core.nn.buckets import TermBucket
from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS, DCellOutput, TermSizes, activation_fn, check_genotypes
from dcell_core.nn.config import ModelConfig
from dcell_core.nn.plan import BucketPlan, build_plan
from dcell_core.nn.stratum_ops import BucketRows, StratumLinear, heads_backward, heads_forward


# Bucket planning weight of a padded gene column on the sparse gene path relative to a dense column (it costs
# parameter memory and optimizer work, not multiply-adds); measured on yeast_go, see docs/performance.md.
SPARSE_GENE_COST = 0.25


class _Workspace:
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
        return (_Workspace, ())

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


class _BackwardState:
    """Shared by the stratum reads of one forward pass: the gradient buffer [rows, B], built on first use."""

    def __init__(self, num_rows: int, buf: torch.Tensor, workspace: _Workspace):
        # the gradient buffer takes the activation buffer's dtype (under autocast gradients may arrive in another)
        self.num_rows, self.dtype, self.device, self.workspace = num_rows, buf.dtype, buf.device, workspace
        self.grad_buf: torch.Tensor | None = None
        self.last_reader = -1  # lowest stratum whose read has a gradient to hand back; frees the buffer

    def new_grad_buf(self, batch: int) -> torch.Tensor:
        self.grad_buf = self.workspace.acquire(self, self.num_rows, batch, self.dtype, self.device).zero_()
        return self.grad_buf

    def free_grad_buf(self) -> None:
        self.grad_buf = None
        self.workspace.release(self)


class _ReadStratum(torch.autograd.Function):
    """Gather every bucket input part of one stratum from the activation buffer: one [n * c_max, B] (children)
    and/or [n * g_max, B] (genes) tensor per bucket, in the order of `gathers`; then, when `below` (the stratum
    whose output is `sources[0]`) is given, that stratum's heads [T, B]. The heads live here so that backward
    adds their input gradient in place into the shared gradient buffer before handing the rows back: the
    stratum output's gradient arrives whole, with no separate sum of two [R_s, B] gradients."""

    @staticmethod
    def forward(ctx, buf, gathers, gene_parts, genes_need_grad, state, stratum, spans, below, n_sources, *tensors):
        # `sources` (the tensors stored in the rows `spans`) are inputs so that autograd routes their gradients
        # through here; their values are already in `buf`. The rest of `tensors` are the heads' parameters.
        sources, head_params = tensors[:n_sources], tensors[n_sources:]
        ctx.gathers, ctx.state, ctx.stratum, ctx.spans, ctx.below = gathers, state, stratum, spans, below
        ctx.n_sources = n_sources
        ctx.set_materialize_grads(False)  # a bucket whose input gets no gradient adds nothing
        out = tuple(buf.index_select(0, index) for index in gathers)
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
                state.new_grad_buf(grad.shape[1])
            state.grad_buf.index_add_(0, index, grad)
        needs = ctx.needs_input_grad[9:]
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
        out = tuple((grad_buf[a:b].view(shape) if ctx.below is not None else grad_buf[a:b].reshape(shape).clone())
                    if need and grad_buf is not None else None
                    for (a, b, shape), need in zip(ctx.spans, needs[:n_sources]))
        if ctx.stratum == state.last_reader:
            state.free_grad_buf()
        return (None,) * 9 + out + tuple(head_grads)


class Stratum(nn.Module):
    def __init__(self, plans: list[BucketPlan], buckets: list[TermBucket], sizes: TermSizes, layers: int,
                 norm_type: str):
        super().__init__()
        self.parts: list[tuple[int, bool]] = []  # (bucket, is gene part) of every gather, in read order
        for k, plan in enumerate(plans):
            for is_gene, gather in ((False, plan.child_gather), (True, plan.gene_gather)):
                if gather.size:  # [n_k * c_max_k] or [n_k * g_max_k] buffer rows of bucket k's inputs
                    self.register_buffer(f"gather_{len(self.parts)}", torch.from_numpy(gather), persistent=False)
                    self.parts.append((k, is_gene))
        self.buckets = nn.ModuleList(buckets)
        self.row_start = plans[0].row_offset  # first buffer row of this stratum's outputs
        self.rows = tuple(BucketRows(b.row_offset - self.row_start, b.n, b.w_max) for b in buckets)
        self.num_rows = sum(b.n * b.w_max for b in buckets)
        # unpadded gene columns: term -> offset of its [G_t, L_t] block (one contiguous column of the first layer
        # per gene input); padded position of every entry
        E = sizes.token_dim
        self.gene_offset: dict[int, int] = {}
        pad_index, pad_base, offset = [], 0, 0
        for plan, bucket in zip(plans, buckets):
            for i, t in enumerate(plan.terms):
                L, G = sizes.widths[t], len(sizes.direct_genes[t]) * E
                if G:
                    self.gene_offset[t] = offset
                    j, r = np.meshgrid(np.arange(G), np.arange(L), indexing="ij")
                    pad_index.append((pad_base + (i * bucket.w_max + r) * bucket.g_max + j).reshape(-1))
                    offset += L * G
            pad_base += bucket.n * bucket.w_max * bucket.g_max
        self.gene_pad_sizes = [b.n * b.w_max * b.g_max for b in buckets]
        self.gene_weight = nn.Parameter(torch.zeros(offset)) if offset else None
        if offset:
            self.register_buffer("gene_pad_index", torch.from_numpy(np.concatenate(pad_index)), persistent=False)
        valid_rows = torch.cat([b.row_mask.reshape(-1) for b in buckets])
        for k in range(layers if norm_type == "batch" else 0):
            self.register_buffer(f"running_mean_{k}", torch.zeros(self.num_rows))
            self.register_buffer(f"running_var_{k}", valid_rows.clone())

    def read_parts(self, genes: bool) -> list[tuple[int, bool]]:
        """The (bucket, is gene part) pairs to read: all, or only the children parts."""
        return [p for p in self.parts if genes or not p[1]]

    def gathers(self, genes: bool) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"gather_{i}") for i, p in enumerate(self.parts) if genes or not p[1])

    def bucket_inputs(self, parts: tuple[torch.Tensor, ...], B: int, genes: bool) -> list[list[torch.Tensor | None]]:
        """[children input [n, c_max, B] or None, gene input [n, g_max, B] or None] per bucket."""
        out: list[list[torch.Tensor | None]] = [[None, None] for _ in self.buckets]
        for (k, is_gene), part in zip(self.read_parts(genes), parts):
            bucket = self.buckets[k]
            out[k][is_gene] = part.view(bucket.n, bucket.g_max if is_gene else bucket.c_max, B)
        return out

    def views(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The [n, w_max, B] block of every bucket in a stratum tensor [R_s, B]."""
        B = h.shape[1]
        return [v.view(b.n, b.w_max, B) for v, b in zip(h.split([b.n * b.w_max for b in self.buckets]), self.buckets)]

    def padded_gene_weights(self) -> list[torch.Tensor | None]:
        """The gene columns as padded [n, w_max, g_max] blocks (dense path), differentiable."""
        padded = self.gene_weight.new_zeros(sum(self.gene_pad_sizes)).index_copy(0, self.gene_pad_index,
                                                                                 self.gene_weight)
        return [p.view(b.n, b.w_max, b.g_max) if b.g_max else None
                for p, b in zip(padded.split(self.gene_pad_sizes), self.buckets)]

    def first_layer(self, inputs: list[list[torch.Tensor | None]], B: int,
                    sparse: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """W I + b of every term of the stratum -> [R_s, B]."""
        dense = (self.padded_gene_weights() if sparse is None and self.gene_weight is not None
                 else [None] * len(self.buckets))
        tensors: list[torch.Tensor | None] = []
        for bucket, (inp_c, inp_g), gene_w in zip(self.buckets, inputs, dense):
            tensors += [bucket.biases[0], bucket.child_weight, inp_c, gene_w, inp_g if gene_w is not None else None]
        tensors.append(self.gene_weight if sparse is not None else None)
        return StratumLinear.apply(self.rows, B, sparse, *tensors)

    def next_layer(self, o: torch.Tensor, k: int) -> torch.Tensor:
        """Extra subsystem layer k >= 1 of every term: W_k O + b_k -> [R_s, B]."""
        tensors: list[torch.Tensor | None] = []
        for bucket, view in zip(self.buckets, self.views(o)):
            tensors += [bucket.biases[k], bucket.layer_weights[k - 1], view, None, None]
        tensors.append(None)
        return StratumLinear.apply(self.rows, o.shape[1], None, *tensors)

    def head_params(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for b in self.buckets for p in (b.head_weight, b.head_bias))

    def compact_output(self, c: Compact, B: int, act, norm_order: str, norm_type: str, training: bool,
                       ) -> torch.Tensor:
        """The output [R_s, B] of a stratum without children (one layer, batch norm or none) from its compact
        form. Without children, a term's pre-activation in sample b is its bias unless one of its genes is
        disrupted in b; so every neuron has one wild-type value v0 [R_s] shared by most samples and a few other
        values e at the entries `c.rows`, `c.flat`. Activation and norm (batch statistics as sums weighted by
        how many samples hold v0) run on that form, and only the output is made dense."""
        bias = _flat([b.biases[0] for b in self.buckets])  # [R_s]
        add = self.gene_weight[c.w_idx]
        if c.values is not None:
            add = add * c.values.to(add.dtype)
        e = bias[c.rows] + add.new_zeros(c.size).index_add(0, c.e_idx, add)
        v0 = bias
        if norm_order == "act_norm":
            v0, e = self._compact_norm(act(v0), act(e), c, B, norm_type, training)
        else:
            v0, e = self._compact_norm(v0, e, c, B, norm_type, training)
            v0, e = act(v0), act(e)
        return _ExpandScatter.apply(v0, e, c.rows, c.flat, B)

    def _compact_norm(self, v0: torch.Tensor, e: torch.Tensor, c: Compact, B: int, norm_type: str, training: bool,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if norm_type == "none":
            return v0, e
        rm, rv = self.running_mean_0, self.running_var_0
        if training:
            if B <= 1:  # as F.batch_norm
                raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                 f"{torch.Size([1, self.num_rows, B])}")
            held = B - v0.new_zeros(self.num_rows).index_add_(0, c.rows, v0.new_ones(c.size))  # samples at v0
            mean = (held * v0 + v0.new_zeros(self.num_rows).index_add(0, c.rows, e)) / B
            d0, de = v0 - mean, e - mean[c.rows]
            var = (held * d0 * d0 + v0.new_zeros(self.num_rows).index_add(0, c.rows, de * de)) / B
            with torch.no_grad():
                rm.mul_(1 - BN_MOMENTUM).add_(mean.detach(), alpha=BN_MOMENTUM)
                rv.mul_(1 - BN_MOMENTUM).add_(var.detach(), alpha=BN_MOMENTUM * B / (B - 1))
        else:
            mean, var = rm, rv
            d0, de = v0 - mean, e - mean[c.rows]
        inv = torch.rsqrt(var + NORM_EPS)
        gain = _flat([b.norm_weights[0] for b in self.buckets])
        shift = _flat([b.norm_biases[0] for b in self.buckets])
        scale = inv * gain
        return d0 * scale + shift, de * scale[c.rows] + shift[c.rows]

    def norm(self, h: torch.Tensor, k: int, norm_type: str, training: bool) -> torch.Tensor:
        if norm_type == "none":
            return h
        if norm_type == "layer":
            return torch.cat([b.layer_norm(v, k).view(-1, h.shape[1]) for b, v in zip(self.buckets, self.views(h))])
        # batch norm per neuron over the batch: channels = the R_s neurons, one "length" axis = the batch
        gain = _flat([b.norm_weights[k] for b in self.buckets])
        shift = _flat([b.norm_biases[k] for b in self.buckets])
        out = F.batch_norm(h.view(1, *h.shape), getattr(self, f"running_mean_{k}"), getattr(self, f"running_var_{k}"),
                           gain, shift, training, BN_MOMENTUM, NORM_EPS)
        return out.view(h.shape)


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


def _compact(row: torch.Tensor, length: torch.Tensor, b: torch.Tensor, w_idx: torch.Tensor,
             values: torch.Tensor | None, B: int) -> Compact:
    """From stratum 0's input slots hit by a disrupted gene (first row of the term, L_t, sample) and their
    elements (in slot order, L_t each): the distinct (term, sample) pairs expanded to their L_t neurons."""
    pairs, inverse = torch.unique(row * B + b, return_inverse=True)  # sorted: by term row, then sample
    pair_len = torch.zeros_like(pairs).scatter_(0, inverse, length)
    pair_first = torch.cumsum(pair_len, 0) - pair_len
    size = int(pair_len.sum())
    step = torch.arange(size, device=row.device)
    rows = step + torch.repeat_interleave(pairs // B - pair_first, pair_len)
    flat = rows * B + torch.repeat_interleave(pairs % B, pair_len)
    slot_first = torch.cumsum(length, 0) - length
    e_idx = torch.arange(len(w_idx), device=row.device) + torch.repeat_interleave(pair_first[inverse] - slot_first,
                                                                                  length)
    return Compact(rows, flat, e_idx, w_idx, values, size)


class _ExpandScatter(torch.autograd.Function):
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
        rows, flat = ctx.saved_tensors
        grad_e = grad.contiguous().view(-1)[flat]
        grad_v0 = grad.sum(1).index_add_(0, rows, grad_e, alpha=-1)
        return grad_v0, grad_e, None, None, None


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return params[0].reshape(-1) if len(params) == 1 else torch.cat([p.reshape(-1) for p in params])


class StratumDCell(nn.Module):
    def __init__(self, sizes: TermSizes, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.sizes, self.cfg = sizes, cfg
        # the gene region is the genotype itself, one row per gene: the sparse gene path applies
        self.binary_genes = cfg.learnable_embedding_dim == 0 and cfg.num_attention_heads == 0
        sparse_genes = self.binary_genes and cfg.sparse_gene_inputs
        self.plan = plan = build_plan(sizes, cfg.subsystem_layers, cfg.num_attention_heads > 0, cfg.bucket_overhead,
                                      SPARSE_GENE_COST if sparse_genes else 1.0)
        self.act = activation_fn(cfg.activation)
        strata = []
        for plans in plan.strata:
            mods = []
            for b in plans:
                genes = [len(sizes.direct_genes[t]) * sizes.token_dim for t in b.terms]
                mods.append(TermBucket([sizes.widths[t] for t in b.terms],
                                       [sizes.fan_in(t) - g for t, g in zip(b.terms, genes)], genes, b.width,
                                       b.child_fan, b.gene_fan, b.row_offset, cfg.subsystem_layers, cfg.norm_type))
            strata.append(Stratum(plans, mods, sizes, cfg.subsystem_layers, cfg.norm_type))
        self.strata = nn.ModuleList(strata)
        self.strata_start = plan.strata[0][0].row_offset
        self.register_buffer("head_order", torch.from_numpy(plan.head_order), persistent=False)  # [T]
        self.register_buffer("state_rows", torch.from_numpy(plan.state_rows - self.strata_start), persistent=False)
        d, heads = cfg.learnable_embedding_dim, cfg.num_attention_heads
        self.embedding = nn.Parameter(torch.empty(sizes.num_genes, d)) if d > 0 else None  # [G, d]
        self.token_proj = nn.Linear(1, cfg.token_dim) if heads > 0 and d == 0 else None
        # parameters only (same names as the oracle's); the batched masked computation is `_attend`
        self.attention = nn.MultiheadAttention(cfg.token_dim, heads, batch_first=True) if heads > 0 else None
        for a, ap in enumerate(plan.attention):
            self.register_buffer(f"attn_genes_{a}", torch.from_numpy(ap.genes), persistent=False)  # [n, g_max]
            self.register_buffer(f"attn_valid_{a}", torch.from_numpy(ap.valid), persistent=False)  # [n, g_max]
        if cfg.norm_type == "batch":
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if self.binary_genes:
            self._register_gene_slots()
        self._buf_workspace, self._grad_workspace = _Workspace(), _Workspace()
        self.reset_parameters()

    def _register_gene_slots(self) -> None:
        """Every (gene, term) input slot as (stratum, gene_weight offset of its column, first row in the stratum
        tensor, L_t), grouped by gene (CSR `gene_slot_ptr`), for `_sparse_entries`."""
        table = []  # (gene, stratum, column offset, row, length)
        for t in range(self.sizes.num_terms):
            s, k, i = self.plan.slot[t]
            stratum = self.strata[s]
            row = stratum.rows[k].start + i * stratum.rows[k].w
            width = self.sizes.widths[t]
            for j, g in enumerate(self.sizes.direct_genes[t]):
                table.append((g, s, stratum.gene_offset[t] + j * width, row, width))
        table = np.array(sorted(table), dtype=np.int64).reshape(-1, 5)
        ptr = np.searchsorted(table[:, 0], np.arange(self.sizes.num_genes + 1))
        self.register_buffer("gene_slot_ptr", torch.from_numpy(ptr.astype(np.int64)), persistent=False)
        self.register_buffer("gene_slot_table", torch.from_numpy(np.ascontiguousarray(table[:, 1:])),
                             persistent=False)

    def _sparse_entries(self, x: torch.Tensor, compact_first: bool) -> list:
        """Per stratum (None where it has no gene columns), the elements (gene_weight index, flat index into the
        [R_s, B] stratum tensor, genotype value, or None when every nonzero entry is 1) of every nonzero genotype
        entry x[b, g], once for each row r < L_t of each input slot (term t) of gene g. With `compact_first`,
        stratum 0's entry is a `Compact` description instead (see `Stratum.compact_output`)."""
        B, dev = x.shape[0], x.device
        b_nz, g_nz = x.nonzero(as_tuple=True)
        value = x[b_nz, g_nz]
        start = self.gene_slot_ptr[g_nz]
        count = self.gene_slot_ptr[g_nz + 1] - start
        src = torch.repeat_interleave(torch.arange(len(g_nz), device=dev), count)  # slot -> nonzero entry
        slot = start[src] + torch.arange(len(src), device=dev) - (torch.cumsum(count, 0) - count)[src]
        table = self.gene_slot_table[slot]  # [m, 4] (stratum, column offset, row, length)
        order = torch.sort(table[:, 0], stable=True).indices  # group by stratum
        table, src = table[order], src[order]
        length = table[:, 3]
        first = torch.cumsum(length, 0) - length  # first element of each slot
        step = torch.arange(int(length.sum()), device=dev)  # element e of slot m is row r = e - first[m]
        w_idx = step + torch.repeat_interleave(table[:, 1] - first, length)
        o_idx = step * B + torch.repeat_interleave(table[:, 2] * B + b_nz[src] - first * B, length)
        values = None if bool((value == 1).all()) else torch.repeat_interleave(value[src], length)
        per_stratum = torch.zeros(len(self.strata), dtype=torch.long, device=dev).index_add_(
            0, table[:, 0], length).tolist()
        columns = (w_idx.split(per_stratum), o_idx.split(per_stratum),
                   [None] * len(per_stratum) if values is None else values.split(per_stratum))
        out = [None if st.gene_weight is None else tuple(c[s] for c in columns) for s, st in enumerate(self.strata)]
        if compact_first:
            slots0 = int((table[:, 0] == 0).sum())
            out[0] = _compact(table[:slots0, 2], length[:slots0], b_nz[src[:slots0]], columns[0][0], columns[2][0], B)
        return out

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        for bucket in self.buckets():
            bucket.reset_parameters(r)
        for stratum in self.strata:
            if stratum.gene_weight is not None:
                nn.init.uniform_(stratum.gene_weight, -r, r)
        if self.embedding is not None:
            nn.init.uniform_(self.embedding, -1.0, 1.0)
        for mod in (self.token_proj, self.attention):
            if mod is not None:
                for p in mod.parameters():
                    nn.init.uniform_(p, -r, r)

    def buckets(self) -> list[TermBucket]:
        return [b for s in self.strata for b in s.buckets]

    def decay_weights(self) -> list[torch.Tensor]:
        """Weight matrices under the L2 penalty (padded entries are zero, so they add nothing)."""
        out = [w for b in self.buckets() for w in (b.child_weight, *b.layer_weights) if w is not None]
        out += [s.gene_weight for s in self.strata if s.gene_weight is not None]
        out += [b.head_weight for b in self.buckets()]
        if self.token_proj is not None:
            out.append(self.token_proj.weight)
        if self.attention is not None:
            out += [self.attention.in_proj_weight, self.attention.out_proj.weight]
        return out

    def padding_violations(self) -> list[str]:
        """Names of bucket parameters with a non-zero padded entry (must be empty)."""
        return [f"strata.{s}.buckets.{k}.{name}" for s, st in enumerate(self.strata)
                for k, b in enumerate(st.buckets) for name in b.padding_violations()]

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_states: bool = False) -> DCellOutput:
        check_genotypes(x, self.sizes.num_genes)
        state = _BackwardState(self.plan.num_rows, x, self._grad_workspace)
        # every row but row 0 is written before it is read; nothing reads the buffer after forward returns
        buf = self._buf_workspace.acquire(state, self.plan.num_rows, x.shape[0], x.dtype, x.device)
        try:
            return self._forward(x, buf, state, return_states)
        finally:
            self._buf_workspace.release(state)

    def _forward(self, x: torch.Tensor, buf: torch.Tensor, state: _BackwardState, return_states: bool,
                 ) -> DCellOutput:
        B = x.shape[0]
        buf[0].zero_()
        sources, spans = self._gene_region(x)
        genes_need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        # binary genotypes needing no gradient: gene columns computed from the nonzero entries only
        sparse = self.binary_genes and self.cfg.sparse_gene_inputs and not genes_need_grad
        # stratum 0 (no children) computed from its few non-wild-type columns; see Stratum.compact_output
        compact = sparse and self.cfg.subsystem_layers == 1 and self.cfg.norm_type in ("batch", "none")
        entries = self._sparse_entries(x, compact) if sparse else [None] * len(self.strata)
        readers = []
        heads, outs = [], []
        if not sparse:  # the sparse path reads no gene rows
            with torch.no_grad():
                for src, (a, b, _) in zip(sources, spans):
                    buf[a:b].copy_(src.reshape(b - a, B))
        norm_type, training = self.cfg.norm_type, self.training
        below = None  # the stratum whose output is `sources`: its heads are computed by the next read
        for s, stratum in enumerate([*self.strata, None]):
            if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
                readers.append(s)
            genes = not sparse
            tensors = (*sources, *(below.head_params() if below is not None else ()))
            parts = _ReadStratum.apply(buf, stratum.gathers(genes) if stratum is not None else (),
                                       tuple(g for _, g in stratum.read_parts(genes)) if stratum is not None else (),
                                       genes_need_grad, state, s, spans, below, len(sources), *tensors)
            if below is not None:
                heads.append(parts[-1])  # [T, B] of the stratum below, bucket-slot order
                parts = parts[:-1]
            if stratum is None:
                break
            if isinstance(entries[s], Compact):
                h = stratum.compact_output(entries[s], B, self.act, self.cfg.norm_order, norm_type, training)
            else:
                h = stratum.first_layer(stratum.bucket_inputs(parts, B, genes), B, entries[s])
            for k in range(self.cfg.subsystem_layers if not isinstance(entries[s], Compact) else 0):
                if k:
                    h = stratum.next_layer(h, k)
                if self.cfg.norm_order == "act_norm":
                    h = stratum.norm(self.act(h), k, norm_type, training)
                else:
                    h = self.act(stratum.norm(h, k, norm_type, training))
            a = stratum.row_start
            with torch.no_grad():
                buf[a:a + stratum.num_rows].copy_(h)
            sources, spans, below = [h], [(a, a + stratum.num_rows, h.shape)], stratum
            outs.append(h)
        state.last_reader = min(readers, default=-1)
        if self.training and self.cfg.norm_type == "batch":
            self.num_batches_tracked += 1
        all_heads = torch.cat(heads).index_select(0, self.head_order).t()  # [B, T] term order
        states = torch.cat(outs).index_select(0, self.state_rows).t() if return_states else None
        return DCellOutput(all_heads[:, -1], all_heads[:, :-1], states)

    def _gene_region(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple]]:
        """The gene-region tensors and their (row start, row stop, shape) in the buffer."""
        start = self.plan.gene_rows[0]
        B = x.shape[0]
        if self.attention is None:
            if self.embedding is None:
                region = x.t()  # [G, B]
            else:  # [G, d, B]: d-vector of each intact gene, zero where disrupted
                region = self.embedding.unsqueeze(-1) * (1.0 - x).t().unsqueeze(1)
            return [region], [(start, start + region.numel() // B, region.shape)]
        tokens = (self.embedding.unsqueeze(0) * (1.0 - x).unsqueeze(-1) if self.embedding is not None
                  else self.token_proj(x.unsqueeze(-1)))  # [B, G, E]
        sources, spans = [], []
        for a, ap in enumerate(self.plan.attention):
            block = self._attend(tokens, getattr(self, f"attn_genes_{a}"), getattr(self, f"attn_valid_{a}"))
            sources.append(block)
            spans.append((ap.row_offset, ap.row_offset + block.shape[0], block.shape))
        return sources, spans

    def _attend(self, tokens: torch.Tensor, genes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Residual masked self-attention within each term's gene tokens -> [n * g_max * E, B] buffer block."""
        B, E = tokens.shape[0], tokens.shape[2]
        n, g = genes.shape
        h = self.cfg.num_attention_heads
        attn = self.attention
        tok = tokens.index_select(1, genes.reshape(-1)).view(B, n, g, E)
        q, k, v = F.linear(tok, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # [B, n, g, E] each
        q, k, v = (z.reshape(B, n, g, h, E // h).transpose(2, 3) for z in (q, k, v))  # [B, n, h, g, E/h]
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=valid.view(n, 1, 1, g))  # padded keys off
        mixed = F.linear(mixed.transpose(2, 3).reshape(B, n, g, E), attn.out_proj.weight, attn.out_proj.bias)
        return (tok + mixed).permute(1, 2, 3, 0).reshape(n * g * E, B)
