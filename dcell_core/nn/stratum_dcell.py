"""The stratum-parallel DCell: every stratum is one gather plus a few batched ops per shape bucket.

Forward keeps all term outputs in one neuron-major activation buffer [rows, B] (layout in plan.py). Stratum s
reads its whole input with one index_select per input kind (`ReadStratum`, reads.py: the children inputs of all its
buckets in one gather, the gene inputs in another; the gene read is marked non-differentiable unless the gene
region needs a gradient, so no input gradient is computed or scattered for gene columns; with binary genotypes
that need no gradient the gene inputs are not read at all: the gene columns are applied from the nonzero genotype
entries), and backward scatters each read's gradient with one index_add_. A stratum that reads only its children's
rows from a float32/float64 CPU buffer outside autocast (the sparse gene path) reads them fused with its first
layer (`ReadLinear`, reads.py): chunks of terms gathered and multiplied while in cache, the gathered inputs never
made whole nor kept for backward.
`StratumLinear` (stratum_ops.py) runs the first linear layer of all its buckets as padded batched matmuls into one
[R_s, B] tensor, activation and batch norm run on that tensor once per stratum, the stratum's output is copied
into the buffer for the strata above, and the next stratum's read also computes this stratum's heads. No Python
loop runs over terms or samples; the op count grows with strata and buckets. In training with tanh then batch
norm (the default order) on float32/float64 CPU tensors, both run in one pass per row block that also computes
the stratum's heads and writes the output into the buffer only (`TanhNorm`, stratum_ops.py). The activation
buffer and the gradient buffer are reused from step to step (`Workspace`, reads.py).

On the sparse path with one layer and batch norm or none, stratum 0 is computed from its non-wild-type entries
(`Stratum.compact_output`) and, batch by batch, the lowest strata above it at their terms' perturbed samples only
(perturbation form, perturbed.py): both are written straight into the buffer, with their heads from the compact
form and their wild-type outputs in spare buffer rows after the plan's (`buffer_rows`).

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcell_core.nn.buckets import TermBucket
from dcell_core.nn.common import DCellOutput, TermSizes, activation_fn, check_genotypes, ragged_steps
from dcell_core.nn.compact import Compact, ExpandIntoBuffer, ExpandScatter, compact_entries
from dcell_core.nn.config import ModelConfig
from dcell_core.nn.native import ops
from dcell_core.nn.perturbed import PerturbationLayout
from dcell_core.nn.plan import build_plan
from dcell_core.nn.reads import (BackwardState, ReadLinear, ReadStratum, Workspace, cpu_kernel_input,
                                 fuses_read)
from dcell_core.nn.stratum import Stratum
from dcell_core.nn.stratum_ops import GeneSlots


# Bucket planning weight of a padded gene column on the sparse gene path relative to a dense column. There such
# padding costs nothing (gene columns are stored unpadded and applied from the nonzero entries), but at 0 the
# planner, which has no per-row cost, merges the childless stratum-0 terms into a few very wide buckets; 0.25
# measured best on yeast_go, see docs/performance.md.
SPARSE_GENE_COST = 0.25


class StratumDCell(nn.Module):
    pair_kernel = True  # strata in perturbation form through PairTanhNorm where it applies (False: tensor ops; A/B)

    def __init__(self, sizes: TermSizes, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        ops()  # the C++ loops (native.py): built now if this machine has not built them yet
        self.sizes, self.cfg = sizes, cfg
        # the gene region is the genotype itself, one row per gene: the sparse gene path applies
        self.binary_genes = cfg.learnable_embedding_dim == 0 and cfg.num_attention_heads == 0
        sparse_genes = self.binary_genes and cfg.sparse_gene_inputs
        self.plan = plan = build_plan(sizes, cfg.subsystem_layers, cfg.num_attention_heads > 0, cfg.bucket_overhead,
                                      SPARSE_GENE_COST if sparse_genes else 1.0)
        self.act = activation_fn(cfg.activation, fast=True)
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
        # stratum 0 and, batch by batch, the strata above it computed at their perturbed samples only
        self.perturbation = (PerturbationLayout(sizes, plan, list(self.strata)) if sparse_genes and
                             cfg.subsystem_layers == 1 and cfg.norm_type in ("batch", "none") else None)
        self._buf_workspace, self._grad_workspace = Workspace(), Workspace()
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

    def _sparse_entries(self, x: torch.Tensor, nonzero: tuple[torch.Tensor, torch.Tensor], compact_first: bool
                        ) -> list:
        """Per stratum (None where it has no gene columns), the input slots (term t, gene g) hit by a nonzero
        genotype entry x[b, g], as `GeneSlots`: sorted by stratum, then by row, ties in genotype-entry order. With
        `compact_first`, stratum 0's entry is a `Compact` description instead (see `Stratum.compact_output`)."""
        B = x.shape[0]
        b_nz, g_nz = nonzero
        value = x[b_nz, g_nz]
        start = self.gene_slot_ptr[g_nz]
        src, step = ragged_steps(self.gene_slot_ptr[g_nz + 1] - start)  # src: slot -> nonzero entry
        slot = start[src] + step
        table = self.gene_slot_table[slot]  # [m, 4] (stratum, column offset, row, length)
        rows_bound = max(st.num_rows for st in self.strata) + 1
        order = torch.sort(table[:, 0] * rows_bound + table[:, 2], stable=True).indices
        table, src = table[order], src[order]
        b = b_nz.index_select(0, src)
        values = None if bool((value == 1).all()) else value.index_select(0, src)
        per_stratum = torch.bincount(table[:, 0], minlength=len(self.strata)).tolist()
        parts = [t.split(per_stratum) for t in (table[:, 2], table[:, 3], table[:, 1], b)]
        parts.append([None] * len(per_stratum) if values is None else values.split(per_stratum))
        out = [None if st.gene_weight is None else GeneSlots(*(p[s] for p in parts), B)
               for s, st in enumerate(self.strata)]
        if compact_first:
            row0, length0, _, b0, _ = (p[0] for p in parts)
            out[0] = compact_entries(row0, length0, b0, *out[0].weight_elements(), B)
        return out

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        for stratum in self.strata:
            stratum.reset_buckets(r)
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

    def head_biases(self) -> list[torch.Tensor]:
        """Every head's bias (the root's and the auxiliary terms'), one flat [T_s] tensor per stratum."""
        return [s.head_bias for s in self.strata]

    def decay_weights(self) -> list[torch.Tensor]:
        """Weight matrices under the L2 penalty (padded entries are zero, so they add nothing)."""
        out = [w for s in self.strata for w in (s.child_weight, *s.layer_weights) if w is not None]
        out += [s.gene_weight for s in self.strata if s.gene_weight is not None]
        out += [s.head_weight for s in self.strata]
        if self.token_proj is not None:
            out.append(self.token_proj.weight)
        if self.attention is not None:
            out += [self.attention.in_proj_weight, self.attention.out_proj.weight]
        return out

    def padding_violations(self) -> list[str]:
        """Stored names of bucket blocks with a non-zero padded entry (must be empty)."""
        return [f"strata.{s}.{name}" for s, st in enumerate(self.strata) for name in st.padding_violations()]

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_states: bool = False) -> DCellOutput:
        check_genotypes(x, self.sizes.num_genes)
        rows = self.buffer_rows(x.shape[0])
        state = BackwardState(rows, x, self._grad_workspace)
        # every row but row 0 is written before it is read; after forward returns, only the backward of fused reads
        # (ReadLinear) reads the buffer, which then keeps it until the last of them has run
        buf = state.acquire_buf(self._buf_workspace, rows, x.shape[0], x)
        try:
            out = self._forward(x, buf, state, return_states)
        except BaseException:
            state.release_buf()
            raise
        if state.buf_users == 0:
            state.release_buf()
        return out

    def buffer_rows(self, batch: int) -> int:
        """Rows of the activation and gradient buffers at this batch size: the plan's, then the wild-type rows."""
        return self.plan.num_rows + (self._wild_rows(batch)[-1] if self.perturbation is not None else 0)

    def _wild_rows(self, B: int) -> list[int]:
        """Buffer rows after the plan's that hold the wild-type outputs of strata in perturbation form: stratum s's
        R_s values from row num_rows + out[s] (flat, row-major); out[-1] = how many such rows there are."""
        out = [0]
        for st in self.strata:
            out.append(out[-1] + -(-st.num_rows // B))
        return out

    def _forward(self, x: torch.Tensor, buf: torch.Tensor, state: BackwardState, return_states: bool,
                 ) -> DCellOutput:
        B = x.shape[0]
        buf[0].zero_()
        sources, spans = self._gene_region(x)
        genes_need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        # binary genotypes needing no gradient: gene columns computed from the nonzero entries only
        sparse = self.binary_genes and self.cfg.sparse_gene_inputs and not genes_need_grad
        norm_type, training = self.cfg.norm_type, self.training
        # tanh then batch norm in training, on the CPU: one pass per row block (TanhNorm; strata in perturbation
        # form: per term, PairTanhNorm)
        tanh_norm = (training and norm_type == "batch" and self.cfg.norm_order == "act_norm" and
                     self.cfg.activation == "tanh" and B > 1 and cpu_kernel_input(buf))
        # stratum 0 (no children) computed from its few non-wild-type columns: with PairTanhNorm laid out as a
        # stratum in perturbation form, otherwise by tensor ops (see Stratum.compact_output)
        compact = sparse and self.perturbation is not None
        pair_kernel = compact and tanh_norm and not return_states and self.pair_kernel
        nonzero = x.nonzero(as_tuple=True) if sparse else None
        entries = (self._sparse_entries(x, nonzero, compact and not pair_kernel) if sparse
                   else [None] * len(self.strata))
        # strata above 0 in perturbation form (perturbed.py): a prefix of the strata, decided per batch
        counts = (self.perturbation.counts(*nonzero, B) if compact and (len(self.strata) > 1 or pair_kernel)
                  else None)
        if counts is not None:  # flat buffer position of each stratum's wild-type outputs; the last: the zero row
            wild = torch.tensor([(self.plan.num_rows + r) * B for r in self._wild_rows(B)[:-1]] + [0],
                                dtype=torch.long, device=x.device)
        formed, v0 = 0, None  # strata 0..formed-1 are in that form; v0: the wild-type output of the last
        readers = []
        heads, outs = [], []
        if not sparse:  # the sparse path reads no gene rows
            with torch.no_grad():
                for src, (a, b, _) in zip(sources, spans):
                    buf[a:b].copy_(src.reshape(b - a, B))
        below = None  # the stratum whose output is `sources` when its heads are computed by the next read
        for s, stratum in enumerate([*self.strata, None]):
            if stratum is None and below is None:  # the top stratum's heads are done
                break
            genes = not sparse
            layout = None
            if s == 0 and pair_kernel:
                layout = self.perturbation.stratum(0, counts, B, entries[0].elements(), wild, entries=False)
            elif counts is not None and 0 < s < len(self.strata) and formed == s and \
                    self.perturbation.takes_form(s, counts, B):
                layout = self.perturbation.stratum(s, counts, B,
                                                   None if entries[s] is None else entries[s].elements(), wild,
                                                   entries=not pair_kernel)
                # the wild-type outputs of the stratum below are read here (column 0 of every read) and nowhere
                # above: this read hands their gradient back with that of its dense output
                a = int(wild[s - 1]) // B
                rows_below = self.strata[s - 1].num_rows
                sources, spans = [*sources, v0], [*spans, (a, a - (-rows_below // B), (rows_below,))]
            if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
                readers.append(s)
            tensors = (*sources, *(below.head_params() if below is not None else ()))
            gathers = ((layout.read,) if layout is not None
                       else stratum.gathers(genes) if stratum is not None else ())
            groups = ((False,) if layout is not None else
                      tuple(stratum.read_groups(genes)) if stratum is not None else ())
            fused = layout is None and stratum is not None and fuses_read(buf, list(groups))
            if fused:  # the children read and the first layer in one (reads.py)
                gene_cols = entries[s] if sparse else None
                parts = ReadLinear.apply(buf, gathers[0], state, s, spans, below, stratum, gene_cols,
                                         torch.is_grad_enabled(), len(sources), *tensors, stratum.biases[0],
                                         stratum.child_weight, stratum.gene_weight if gene_cols is not None else None)
                parts = parts if below is not None else (parts,)
            else:
                parts = ReadStratum.apply(buf, gathers, layout is not None, groups, genes_need_grad, state, s, spans,
                                          below, len(sources), *tensors)
            if below is not None:
                heads.append(parts[-1])  # [T, B] of the stratum below, bucket-slot order
                parts = parts[:-1]
            if stratum is None:
                break
            a, R = stratum.row_start, stratum.num_rows
            if isinstance(entries[s], Compact) or layout is not None:  # compact form: (wild type, entries)
                if pair_kernel:  # laid out (stratum 0 too): one pass per term, the output only in the buffer
                    h, v0, head = stratum.pair_tanh_norm(parts, layout, buf[a:a + R])
                else:
                    c = entries[s] if layout is None else layout.compact
                    v0, e = (stratum.compact_output(c, B, self.act, self.cfg.norm_order, norm_type, training)
                             if layout is None else
                             stratum.pair_output(parts, layout, B, self.act, self.cfg.norm_order, norm_type,
                                                 training))
                    head = stratum.compact_heads(v0, e, c, getattr(self.perturbation, f"row_term_{s}"), B)
                    if return_states:
                        h = ExpandScatter.apply(v0, e, c.rows, c.flat, B)
                        with torch.no_grad():
                            buf[a:a + R].copy_(h)
                    else:  # dense only in the buffer; `h` stands in for its rows' gradient
                        h = ExpandIntoBuffer.apply(v0, e, c.rows, c.flat, buf[a:a + R])
                heads.append(head)
                if counts is not None:
                    formed += 1
                    with torch.no_grad():
                        buf.view(-1)[int(wild[s]): int(wild[s]) + R].copy_(v0)
                below = None  # its heads are done
            else:
                v0 = None
                h = parts[0] if fused else stratum.first_layer(
                    parts, B, genes, None if entries[s] is None else entries[s].elements())
                layers = self.cfg.subsystem_layers
                # the last layer's TanhNorm also computes the stratum's heads and writes the output into the buffer
                # only (`h` then stands in for its rows' gradient) unless the states are returned
                for k in range(layers):
                    if k:
                        h = stratum.next_layer(h, k)
                    if tanh_norm and k == layers - 1:
                        h, head = stratum.tanh_norm_heads(h, k, None if return_states else buf[a:a + R])
                    elif tanh_norm:
                        h = stratum.tanh_norm(h, k)
                    elif self.cfg.norm_order == "act_norm":
                        h = stratum.norm(self.act(h), k, norm_type, training)
                    else:
                        h = self.act(stratum.norm(h, k, norm_type, training))
                if not tanh_norm or return_states:
                    with torch.no_grad():
                        buf[a:a + R].copy_(h)
                if tanh_norm:
                    heads.append(head)
                below = None if tanh_norm else stratum
            sources, spans = [h], [(a, a + R, h.shape)]
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
