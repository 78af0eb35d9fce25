"""Wild-type propagation above stratum 0: a stratum computed only at its terms' perturbed samples.

A term t is perturbed in sample b when a gene of its subtree (its own genes and those of every descendant) is
disrupted in b. Where it is not, every input of t holds its wild-type value, so t's pre-activation is the same
wild-type value in all those samples (batch norm then maps equal values to equal values). A stratum in
perturbation form therefore computes, per bucket, one matmul over 1 + m_q columns instead of B: column 0 the
wild-type input (the children's wild-type values), column 1 + k the term's k-th perturbed sample (its children
read from the activation buffer at that sample; m_q = the most perturbed samples of any term of the bucket,
shorter lists padded). Activation and batch norm (statistics as sums weighted by how many samples hold the
wild-type value) run on the wild-type value plus the perturbed entries, and the output is expanded to the
dense [R_s, B] tensor the strata above read.

Exact for any genotype values. Applies on the sparse gene path with one layer and batch norm or none (the paper's
setting), to a stratum whose strata below are all in this form (stratum 0 always is there, see
`Stratum.compact_output`), whose perturbed reads are at most `PerturbationLayout.max_read_ratio` of the dense
reads and save at least `min_saved_reads` elements (laying a stratum out has a fixed cost: small batches stay
dense); the top strata, where nearly every sample perturbs nearly every term, stay dense.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from dcell_core.nn.common import TermSizes, ragged_steps
from dcell_core.nn.compact import Compact
from dcell_core.nn.plan import Plan


class StratumPairs(NamedTuple):
    """One stratum in perturbation form for one batch."""
    cols: tuple[int, ...]  # 1 + m_q per bucket
    read: torch.Tensor  # flat buffer positions of the inputs: per bucket with children its [n, c_max, 1 + m_q]
    # block, flattened, one bucket after another (one gather and one scatter per stratum)
    compact: Compact  # the perturbed entries: rows (stratum rows), flat (row * B + b), size
    z_wild: torch.Tensor  # [R_s] position of each row's wild-type pre-activation in the flat StratumLinear output
    z_entry: torch.Tensor  # [size] position of each entry's pre-activation there
    genes: tuple | None  # (gene_weight index, position there, value or None) of the gene columns, or None


class PerturbationLayout(nn.Module):
    """Static tables (built once per model) and the per-batch layout of strata in perturbation form."""

    max_read_ratio = 0.12  # a stratum takes the form when its padded perturbed reads are <= this x the dense reads
    min_saved_reads = 2 ** 21  # ... and save at least this many read elements (a formed stratum's fixed cost)

    def __init__(self, sizes: TermSizes, plan: Plan, strata: list):
        super().__init__()
        G = sizes.num_genes
        # per position u (bucket-slot order over all strata): its stratum-local bucket, slot, width L, first row
        bucket, slot, width, row0, ustart, bstart = [], [], [], [], [0], [0]
        row_starts = np.array([st.row_start for st in strata])
        self.bucket_shapes = []  # per stratum: [(n, w_max, c_max)]
        for s, plans in enumerate(plan.strata):
            st = strata[s]
            row_u = np.zeros(st.num_rows, dtype=np.int64)
            for q, b in enumerate(plans):
                for i, t in enumerate(b.terms):
                    first = st.rows[q].start + i * b.width
                    row_u[first:first + b.width] = len(bucket)
                    bucket.append(q)
                    slot.append(i)
                    width.append(sizes.widths[t])
                    row0.append(first)
            ustart.append(len(bucket))
            bstart.append(bstart[-1] + len(plans))
            self.bucket_shapes.append([(len(b.terms), b.width, b.child_fan) for b in plans])
            rq = np.concatenate([np.full(b.n * b.w, q) for q, b in enumerate(st.rows)])
            rl = np.concatenate([np.arange(b.n * b.w) for b in st.rows])
            row_term = row_u - ustart[-2]  # the term slot (bucket-slot order inside the stratum) of every row
            for name, v in (("row_bucket", rq), ("row_local", rl), ("row_term", row_term)):
                self.register_buffer(f"{name}_{s}", torch.from_numpy(v.astype(np.int64)), persistent=False)
            for q, b in enumerate(plans):
                if b.child_fan:
                    rows = b.child_gather.reshape(len(b.terms), b.child_fan)
                    # each child row's stratum and place in it, for its wild-type value (padding: row 0, which
                    # is zero, through the sentinel stratum len(strata))
                    of = np.searchsorted(row_starts, rows, side="right") - 1
                    of = np.where(rows == 0, len(strata), of)
                    off = np.where(rows == 0, 0, rows - np.append(row_starts, 0)[of])
                    for name, v in (("child_rows", rows), ("child_stratum", of), ("child_off", off)):
                        self.register_buffer(f"{name}_{s}_{q}", torch.from_numpy(v.astype(np.int64)),
                                             persistent=False)
        self.ustart, self.bstart = ustart, bstart
        for name, v in (("u_bucket", bucket), ("u_slot", slot), ("u_width", width), ("u_row0", row0)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.long), persistent=False)
        self.register_buffer("u_gbucket", torch.tensor([bstart[s] + q for s in range(len(plan.strata))
                                                        for q in bucket[ustart[s]:ustart[s + 1]]], dtype=torch.long),
                             persistent=False)
        # gene -> the positions u of the terms above stratum 0 whose subtree holds it (CSR)
        t_idx, g_idx = np.nonzero(sizes.subtree_matrix())
        us = plan.head_order[t_idx]
        keep = us >= ustart[1]
        order = np.lexsort((us[keep], g_idx[keep]))
        genes, us = g_idx[keep][order], us[keep][order]
        self.register_buffer("anc_ptr", torch.from_numpy(np.searchsorted(genes, np.arange(G + 1)).astype(np.int64)),
                             persistent=False)
        self.register_buffer("anc_u", torch.from_numpy(us.astype(np.int64)), persistent=False)

    def counts(self, b_nz: torch.Tensor, g_nz: torch.Tensor, B: int):
        """The perturbed (position u, sample b) pairs of all terms above stratum 0, sorted by u then b, and the
        most perturbed samples per bucket (a list over all buckets, stratum by stratum)."""
        start = self.anc_ptr[g_nz]
        src, step = ragged_steps(self.anc_ptr[g_nz + 1] - start)
        keys = torch.unique(self.anc_u[start[src] + step] * B + b_nz[src])
        u, b = keys // B, keys % B
        cnt = torch.bincount(u, minlength=len(self.u_bucket))
        m = torch.zeros(self.bstart[-1], dtype=torch.long, device=u.device).scatter_reduce_(
            0, self.u_gbucket, cnt, "amax")
        return u, b, cnt, m.tolist()

    def takes_form(self, s: int, m: list[int], B: int) -> bool:
        shapes = self.bucket_shapes[s]
        ms = m[self.bstart[s]:self.bstart[s + 1]]
        dense = sum(n * c * B for n, _, c in shapes)
        reads = sum(n * c * (1 + mq) for (n, _, c), mq in zip(shapes, ms))
        return reads <= self.max_read_ratio * dense and dense - reads >= self.min_saved_reads

    def stratum(self, s: int, pairs, m: list[int], B: int, genes: tuple | None, wild: torch.Tensor
                ) -> StratumPairs:
        """The layout of stratum s >= 1 for this batch. `pairs` = (u, b, cnt) from `counts`; `genes` the stratum's
        sparse gene entries (gene_weight index, flat row * B + b, value or None); `wild` [S + 1] the flat buffer
        position of each stratum's wild-type values (their row j at wild[s] + j; wild[S] = 0, the zero row)."""
        u_all, b_all, cnt = pairs
        dev = u_all.device
        shapes = self.bucket_shapes[s]
        ms = m[self.bstart[s]:self.bstart[s + 1]]
        cols = tuple(1 + mq for mq in ms)
        z_off = np.cumsum([0] + [n * w * c for (n, w, _), c in zip(shapes, cols)])[:-1]
        samp_off = np.cumsum([0] + [n * (1 + mq) for (n, _, _), mq in zip(shapes, ms)])
        t_cols, t_zoff, t_soff = (torch.tensor(v, dtype=torch.long, device=dev) for v in (cols, z_off, samp_off[:-1]))
        u0, u1 = self.ustart[s], self.ustart[s + 1]
        first = torch.cumsum(cnt, 0) - cnt
        p0, p1 = (int(v) for v in torch.searchsorted(u_all, torch.tensor([u0, u1], device=dev)))
        up, bp = u_all[p0:p1], b_all[p0:p1]
        k = torch.arange(p0, p1, device=dev) - first.index_select(0, up)
        qu, iu = self.u_bucket.index_select(0, up), self.u_slot.index_select(0, up)
        pair_cols = t_cols.index_select(0, qu)
        # every bucket's [n, 1 + m_q] columns: 0 for the wild type (overwritten below), then the perturbed samples
        # (padding: sample 0, whose columns are never read back)
        samp = torch.zeros(int(samp_off[-1]), dtype=torch.long, device=dev)
        samp[t_soff.index_select(0, qu) + iu * pair_cols + 1 + k] = bp
        reads = []
        for q, ((n, _, c), mq) in enumerate(zip(shapes, ms)):
            if not c:
                continue
            idx = getattr(self, f"child_rows_{s}_{q}").unsqueeze(2) * B + \
                samp[int(samp_off[q]): int(samp_off[q + 1])].view(n, 1, 1 + mq)
            idx[:, :, 0] = wild[getattr(self, f"child_stratum_{s}_{q}")] + getattr(self, f"child_off_{s}_{q}")
            reads.append(idx.view(-1))
        # entries: every pair's L_u rows
        length = self.u_width.index_select(0, up)
        size = int(length.sum())

        def spread(v: torch.Tensor) -> torch.Tensor:  # a per-pair value on each of the pair's entries
            return torch.repeat_interleave(v, length, output_size=size)

        r = torch.arange(size, device=dev) - spread(torch.cumsum(length, 0) - length)
        row0 = self.u_row0.index_select(0, up)
        rows = spread(row0) + r
        flat = rows * B + spread(bp)
        row_q, row_l = getattr(self, f"row_bucket_{s}"), getattr(self, f"row_local_{s}")
        z_wild = t_zoff.index_select(0, row_q) + row_l * t_cols.index_select(0, row_q)
        z_entry = spread(z_wild.index_select(0, row0) + 1 + k) + r * spread(pair_cols)
        gene_part = None
        if genes is not None:
            w_idx, o_idx, value = genes
            rank = torch.full((u1 - u0, B), -1, dtype=torch.long, device=dev)
            rank[up - u0, bp] = k
            g_rows = o_idx // B
            g_term = getattr(self, f"row_term_{s}").index_select(0, g_rows)
            k_g = rank.view(-1).index_select(0, g_term * B + o_idx % B)
            gene_part = (w_idx, z_wild.index_select(0, g_rows) + 1 + k_g, value)
        return StratumPairs(cols, torch.cat(reads), Compact(rows, flat, None, None, None, size), z_wild, z_entry,
                            gene_part)
