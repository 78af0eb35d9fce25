"""The stratum-parallel DCell: every stratum is one gather plus a few batched ops per shape bucket.

Forward keeps all term outputs in one neuron-major activation buffer [rows, B] (layout in plan.py). Stratum s
reads its whole input with one index_select per bucket and input part (`_ReadStratum`; a bucket's children part
and gene part are read separately, and the gene part is marked non-differentiable unless the gene region needs a
gradient, so no input gradient is computed or scattered for gene columns; with binary genotypes that need no
gradient the gene part is not read at all: `_SparseGeneColumns` applies the gene columns from the nonzero genotype
entries), each of its buckets runs padded batched matmuls
(`TermBucket`), and the bucket outputs are copied into the buffer for the strata above. No Python loop runs
over terms or samples; the op count grows with strata and buckets.

Backward of the buffer: instead of autograd re-materializing a [rows, B] gradient per stratum, every stratum's
read adds its input gradient into one shared gradient buffer (index_add_) and hands the finished rows of the
stratum below back to autograd. Stratum s-1 is read only by strata >= s, and autograd runs the reads top-down
(read s needs stratum s's gradient, which needs read s+1), so when read s runs, every contribution to
stratum s-1's rows is already in the buffer.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from dcell_core.nn.buckets import TermBucket
from dcell_core.nn.common import DCellOutput, TermSizes, activation_fn, check_genotypes
from dcell_core.nn.config import ModelConfig
from dcell_core.nn.plan import build_plan


# Bucket planning weight of a padded gene column on the sparse gene path relative to a dense column (it costs
# parameter memory and optimizer work, not multiply-adds); measured on yeast_go, see docs/performance.md.
SPARSE_GENE_COST = 0.25


class _BackwardState:
    """Shared by the stratum reads of one forward pass: the gradient buffer [rows, B], built on first use."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self.grad_buf: torch.Tensor | None = None
        self.last_reader = -1  # lowest stratum whose read has a gradient to hand back; frees the buffer


class _ReadStratum(torch.autograd.Function):
    """Gather every bucket input part of one stratum from the activation buffer: one [n * c_max, B] (children)
    and/or [n * g_max, B] (genes) tensor per bucket, in the order of `gathers`."""

    @staticmethod
    def forward(ctx, buf, gathers, gene_parts, genes_need_grad, state, stratum, spans, *sources):
        # `sources` (the tensors stored in the rows `spans`) are inputs only so that autograd routes their
        # gradients through here; their values are already in `buf`.
        ctx.gathers, ctx.state, ctx.stratum, ctx.spans = gathers, state, stratum, spans
        ctx.set_materialize_grads(False)  # a bucket whose input gets no gradient adds nothing
        out = tuple(buf.index_select(0, index) for index in gathers)
        if not genes_need_grad:
            ctx.mark_non_differentiable(*(o for o, is_gene in zip(out, gene_parts) if is_gene))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        state = ctx.state
        for index, grad in zip(ctx.gathers, grads):
            if grad is None:
                continue
            if state.grad_buf is None:
                state.grad_buf = grad.new_zeros(state.num_rows, grad.shape[1])
            state.grad_buf.index_add_(0, index, grad)
        grad_buf = state.grad_buf  # None: no bucket input of this or a higher stratum got a gradient
        out = tuple(grad_buf[a:b].view(shape) if need and grad_buf is not None else None
                    for (a, b, shape), need in zip(ctx.spans, ctx.needs_input_grad[7:]))
        if ctx.stratum == state.last_reader:
            state.grad_buf = None
        return (None,) * 7 + out


class Stratum(nn.Module):
    def __init__(self, child_gathers: list[torch.Tensor], gene_gathers: list[torch.Tensor],
                 buckets: list[TermBucket]):
        super().__init__()
        self.parts: list[tuple[int, bool]] = []  # (bucket, is gene part) of every gather, in read order
        for k, (child, gene) in enumerate(zip(child_gathers, gene_gathers)):
            for is_gene, gather in ((False, child), (True, gene)):
                if gather.numel():  # [n_k * c_max_k] or [n_k * g_max_k] buffer rows of bucket k's inputs
                    self.register_buffer(f"gather_{len(self.parts)}", gather, persistent=False)
                    self.parts.append((k, is_gene))
        self.buckets = nn.ModuleList(buckets)

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
        act = activation_fn(cfg.activation)
        strata = []
        for buckets in plan.strata:
            mods = []
            for b in buckets:
                genes = [len(sizes.direct_genes[t]) * sizes.token_dim for t in b.terms]
                mods.append(TermBucket([sizes.widths[t] for t in b.terms],
                                       [sizes.fan_in(t) - g for t, g in zip(b.terms, genes)], genes, b.width,
                                       b.child_fan, b.gene_fan, b.row_offset, cfg.subsystem_layers, cfg.norm_type,
                                       cfg.norm_order, act))
            strata.append(Stratum([torch.from_numpy(b.child_gather) for b in buckets],
                                  [torch.from_numpy(b.gene_gather) for b in buckets], mods))
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
        self.reset_parameters()

    def _register_gene_slots(self) -> None:
        """Gene -> (bucket, term slot i, gene column j) of every gene input slot, grouped by gene (CSR), for the
        sparse gene path (`_sparse_gene_entries`)."""
        gene_start = self.plan.gene_rows[0]
        table = []  # (gene, bucket, i, j)
        for q, bucket in enumerate(self.buckets()):
            s, k = next((s, k) for s, st in enumerate(self.strata) for k, b in enumerate(st.buckets) if b is bucket)
            gather = self.plan.strata[s][k].gene_gather.reshape(bucket.n, bucket.g_max)
            i, j = np.nonzero(gather)  # row 0 = padding
            table.append(np.stack([gather[i, j] - gene_start, np.full_like(i, q), i, j], axis=1))
        table = np.concatenate(table) if table else np.zeros((0, 4), dtype=np.int64)
        table = table[np.lexsort((table[:, 1], table[:, 0]))]
        ptr = np.searchsorted(table[:, 0], np.arange(self.sizes.num_genes + 1))
        for name, value in (("gene_slot_ptr", ptr), ("gene_slot_bucket", table[:, 1]), ("gene_slot_i", table[:, 2]),
                            ("gene_slot_j", table[:, 3])):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64)),
                                 persistent=False)

    def _sparse_gene_entries(self, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per bucket, the nonzero gene inputs as (slot i, gene column j, sample b, value) [m] each: every
        nonzero genotype entry x[b, g] once for each input slot of gene g."""
        b_nz, g_nz = x.nonzero(as_tuple=True)
        value = x[b_nz, g_nz]
        start = self.gene_slot_ptr[g_nz]
        count = self.gene_slot_ptr[g_nz + 1] - start
        src = torch.repeat_interleave(torch.arange(len(g_nz), device=x.device), count)  # entry -> nonzero
        first = torch.cumsum(count, 0) - count
        slot = start[src] + torch.arange(len(src), device=x.device) - first[src]
        bucket = self.gene_slot_bucket[slot]
        bucket, order = torch.sort(bucket, stable=True)
        slot, src = slot[order], src[order]
        sizes = torch.bincount(bucket, minlength=len(self.buckets())).tolist()
        columns = (self.gene_slot_i[slot], self.gene_slot_j[slot], b_nz[src], value[src])
        return list(zip(*(c.split(sizes) for c in columns)))

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        for bucket in self.buckets():
            bucket.reset_parameters(r)
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
        out = [w for b in self.buckets() for w in (b.child_weight, b.gene_weight, *b.layer_weights) if w is not None]
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
        B = x.shape[0]
        buf = x.new_empty(self.plan.num_rows, B)  # every row but row 0 is written before it is read
        buf[0].zero_()
        sources, spans = self._gene_region(x)
        genes_need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        # binary genotypes needing no gradient: gene columns computed from the nonzero entries only
        sparse = self.binary_genes and self.cfg.sparse_gene_inputs and not genes_need_grad
        entries = iter(self._sparse_gene_entries(x)) if sparse else None
        state = _BackwardState(self.plan.num_rows)
        readers = []
        heads, outs = [], []
        with torch.no_grad():
            for src, (a, b, _) in zip(sources, spans):
                buf[a:b].copy_(src.reshape(b - a, B))
        for s, stratum in enumerate(self.strata):
            if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
                readers.append(s)
            parts = _ReadStratum.apply(buf, stratum.gathers(not sparse),
                                       tuple(g for _, g in stratum.read_parts(not sparse)), genes_need_grad,
                                       state, s, spans, *sources)
            sources, spans = [], []
            for bucket, (inp_c, inp_g) in zip(stratum.buckets, stratum.bucket_inputs(parts, B, not sparse)):
                out, head = bucket(inp_c, inp_g, next(entries) if sparse else None, B)
                a, b = bucket.row_offset, bucket.row_offset + bucket.n * bucket.w_max
                with torch.no_grad():
                    buf[a:b].copy_(out.view(b - a, B))
                sources.append(out)
                spans.append((a, b, out.shape))
                heads.append(head)  # [n, 1, B]
                outs.append(out)
        state.last_reader = min(readers, default=-1)
        if self.training and self.cfg.norm_type == "batch":
            self.num_batches_tracked += 1
        all_heads = torch.cat(heads).view(-1, B).index_select(0, self.head_order).t()  # [B, T] term order
        states = None
        if return_states:
            states = torch.cat([o.reshape(-1, B) for o in outs]).index_select(0, self.state_rows).t()
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
