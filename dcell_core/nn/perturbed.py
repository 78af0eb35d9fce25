"""Wild-type propagation above stratum 0: a stratum computed only at its terms' perturbed samples.

A term t is perturbed in sample b when a gene of its subtree (its own genes and those of every descendant) is
disrupted in b. Where it is not, every input of t holds its wild-type value, so t's pre-activation is the same
wild-type value in all those samples (batch norm then maps equal values to equal values). A stratum in
perturbation form therefore computes, per tier of a bucket, one matmul over 1 + m columns instead of B: column
0 the wild-type input (the children's wild-type values), column 1 + k the term's k-th perturbed sample (its
children read from the activation buffer at that sample; the bucket's terms sorted into tiers by how many
perturbed samples they have, m = the most in the tier, shorter lists padded). Activation and batch norm
(statistics as sums weighted by how many samples hold the wild-type value) run on the wild-type value plus the
perturbed entries, and the output is expanded to the dense [R_s, B] tensor the strata above read (in training
with tanh and batch norm on the CPU all in one pass per term: stratum_ops.PairTanhNorm).

Exact for any genotype values. Applies on the sparse gene path with one layer and batch norm or none (the paper's
setting), to a stratum whose strata below are all in this form (stratum 0 always is there, see
`Stratum.compact_output`) and that costs less in the form by `PerturbationLayout.takes_form`'s rule (small
batches stay dense); the top strata, where nearly every sample perturbs nearly every term, stay dense.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dcell_core.nn.common import TermSizes, flat_add_, ragged_steps
from dcell_core.nn.native import ops
from dcell_core.nn.compact import Compact
from dcell_core.nn.plan import Plan
from dcell_core.nn.stratum_ops import BucketRows


class PerturbedPairs(NamedTuple):
    """The perturbed (position u, sample b) pairs of one batch and the tiers they sort the terms into."""
    u: torch.Tensor  # pairs, sorted by u then b
    b: torch.Tensor
    cnt: torch.Tensor  # [U] perturbed samples of every position u
    key: torch.Tensor  # [U] its tier: global bucket * levels + level (level: bit length of cnt)
    rank: torch.Tensor  # [U] its place among the positions of its tier, in u order
    tier_n: np.ndarray  # [buckets, levels] positions per tier
    tier_m: np.ndarray  # [buckets, levels] the most perturbed samples of a position of the tier


class StratumPairs(NamedTuple):
    """One stratum in perturbation form for one batch. Its matmul runs per tier (one block per tier, below) with
    the terms of each bucket sorted into tiers by how many perturbed samples they have (its k-th tier: 2^(k-1) to
    2^k - 1 of them; tier 0: none), each tier padded to its own most, not the bucket's: the stratum's weights
    and biases are permuted into tier order for it (`PermuteRows`, per bucket its terms in tier order)."""
    cols: tuple[int, ...]  # per tier: 1 + its most perturbed samples
    rows: tuple[BucketRows, ...]  # per tier: its first row in tier order, terms, width (the bucket's)
    weight_cols: tuple[int, ...]  # per tier: its bucket's c_max
    weight_perm: tuple  # `PermuteRows` arguments (blocks, perm, inverse) of the stratum's child weight
    row_perm: tuple  # ... and of its rows (biases): per bucket its terms' slots in tier order
    read: PairRead  # the inputs: per tier with children its [n, c_max, cols] block, one tier after another
    compact: Compact | None  # the perturbed entries: rows (stratum rows), flat (row * B + b), size
    z_wild: torch.Tensor  # [R_s] position of each row's wild-type pre-activation in the flat StratumLinear output
    # (row r's entry k, at its term's k-th perturbed sample, at z_wild[r] + 1 + k)
    z_entry: torch.Tensor | None  # [size] position of each entry's pre-activation there
    terms: torch.Tensor  # [6, T_s] per term: first row, width, real rows, perturbed samples m, first of them in
    # `samp`, columns (1 + the tier's most perturbed samples): the form stratum_ops.PairTanhNorm takes
    samp: torch.Tensor  # the terms' perturbed samples, term by term, ascending
    genes: tuple | None  # (gene_weight index, position there, value or None) of the gene columns, or None


class PairRead(NamedTuple):
    """The read of a stratum in perturbation form from the flat activation buffer [rows, B]: per tier g with
    children (n[g] terms, c[g] input rows each, cols[g] columns) a block [n, c, cols] whose element (j, i, 0) is
    buf[wild[e]] (term j's input row i at its wild type; e counts the input rows over the tiers, `row` and `wild`
    [sum n * c]) and element (j, i, k) is buf[row[e], samp[soff[g] + j * cols + k]]. On the CPU in C++ (csrc
    pair_read_*: one index per input row, not per element); elsewhere through the flat index (`index`)."""
    row: torch.Tensor
    wild: torch.Tensor
    samp: torch.Tensor
    n: list[int]
    c: list[int]
    cols: list[int]
    soff: list[int]

    def index(self, B: int) -> torch.Tensor:
        """The flat buffer position of every element of the read."""
        blocks, e = [], 0
        for n, c, cols, soff in zip(self.n, self.c, self.cols, self.soff):
            idx = self.row[e:e + n * c].view(n, c, 1) * B + self.samp[soff:soff + n * cols].view(n, 1, cols)
            idx[:, :, 0] = self.wild[e:e + n * c].view(n, c)
            blocks.append(idx.view(-1))
            e += n * c
        return torch.cat(blocks) if blocks else self.row.new_zeros(0)

    def gather(self, buf: torch.Tensor) -> torch.Tensor:
        if _pair_kernel(buf):
            return ops().pair_read_forward(buf, *self)
        return buf.view(-1).index_select(0, self.index(buf.shape[1]))

    def add_back_(self, target: torch.Tensor, grad: torch.Tensor) -> None:
        """target (the gradient buffer) at the read's positions += grad, in element order."""
        if _pair_kernel(target) and grad.dtype == target.dtype:
            ops().pair_read_backward_(target, grad.contiguous(), *self)
        else:
            flat_add_(target.view(-1), self.index(target.shape[1]), grad)


def _pair_kernel(buf: torch.Tensor) -> bool:
    return buf.device.type == "cpu" and buf.dtype in (torch.float32, torch.float64) and buf.is_contiguous()


class PermuteRows(torch.autograd.Function):
    """A flat tensor made of blocks (offset, n, size), each n rows of `size` elements (together the whole tensor),
    with the rows of block q in the order perm[q]: out block q row i = src block q row perm[q][i]. Backward
    permutes back with the inverses `inv` (row copies both ways, no scatter)."""

    @staticmethod
    def forward(ctx, src, blocks, perm, inv):
        ctx.blocks, ctx.inv = blocks, inv
        return permute_rows(src, blocks, perm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return permute_rows(grad.contiguous(), ctx.blocks, ctx.inv), None, None, None


def permute_rows(src: torch.Tensor, blocks: list[tuple[int, int, int]], perm) -> torch.Tensor:
    out = torch.empty_like(src)
    for (offset, n, size), p in zip(blocks, perm):
        end = offset + n * size
        torch.index_select(src[offset:end].view(n, size), 0, p, out=out[offset:end].view(n, size))
    return out


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(perm).index_copy_(0, perm, torch.arange(len(perm), device=perm.device))


class PerturbationLayout(nn.Module):
    """Static tables (built once per model) and the per-batch layout of strata in perturbation form."""

    # A stratum takes the form when its padded perturbed reads are at most `max_read_ratio` of the dense reads,
    # save at least `min_saved_reads` elements (a formed stratum's fixed cost: small batches stay dense) and, with
    # `read_cost`, cost less by the model: its multiply-adds plus read_cost per read element (an element gathered
    # and added back one by one, against a whole buffer row per input row when dense) at most the dense
    # multiply-adds. So wide terms (the contained basis) take the form with more perturbed samples than narrow ones.
    max_read_ratio = 1.0
    min_saved_reads = 2 ** 21
    read_cost: float | None = 96.0
    tiers = True  # False: one tier per bucket, padded to its most perturbed term (the layout before tiers; A/B)

    def __init__(self, sizes: TermSizes, plan: Plan, strata: list):
        super().__init__()
        G = sizes.num_genes
        # per position u (bucket-slot order over all strata): its stratum-local bucket, slot, width L, first row
        bucket, slot, width, row0, ustart, bstart = [], [], [], [], [0], [0]
        b_width = []  # per position: its bucket's w_max
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
                    b_width.append(b.width)
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
        # per stratum: the blocks of its flat child weight and of its rows, one per bucket (`PermuteRows`)
        self.weight_blocks = [[(st.blocks[q]["child_weight"][0], n, w * c) for q, (n, w, c) in enumerate(shapes)
                               if c] for st, shapes in zip(strata, self.bucket_shapes)]
        self.row_blocks = [[(rows.start, rows.n, rows.w) for rows in st.rows] for st in strata]
        self.bucket_fan = np.array([c for shapes in self.bucket_shapes for _, _, c in shapes], dtype=np.int64)
        self.bucket_width = np.array([w for shapes in self.bucket_shapes for _, w, _ in shapes], dtype=np.int64)
        for name, v in (("u_bucket", bucket), ("u_slot", slot), ("u_width", width), ("u_row0", row0),
                        ("u_bwidth", b_width)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.long), persistent=False)
        self.register_buffer("u_gbucket", torch.tensor([bstart[s] + q for s in range(len(plan.strata))
                                                        for q in bucket[ustart[s]:ustart[s + 1]]], dtype=torch.long),
                             persistent=False)
        # gene -> the positions u of the terms whose subtree holds it (CSR)
        t_idx, g_idx = np.nonzero(sizes.subtree_matrix())
        us = plan.head_order[t_idx]
        order = np.lexsort((us, g_idx))
        genes, us = g_idx[order], us[order]
        self.register_buffer("anc_ptr", torch.from_numpy(np.searchsorted(genes, np.arange(G + 1)).astype(np.int64)),
                             persistent=False)
        self.register_buffer("anc_u", torch.from_numpy(us.astype(np.int64)), persistent=False)

    def counts(self, b_nz: torch.Tensor, g_nz: torch.Tensor, B: int) -> PerturbedPairs:
        """The perturbed (position u, sample b) pairs of all terms and the tiers of every bucket: a term with m
        perturbed samples is in tier m.bit_length() of its bucket."""
        start = self.anc_ptr[g_nz]
        src, step = ragged_steps(self.anc_ptr[g_nz + 1] - start)
        keys = torch.unique(self.anc_u[start[src] + step] * B + b_nz[src])
        u, b = keys // B, keys % B
        dev = u.device
        cnt = torch.bincount(u, minlength=len(self.u_bucket))
        levels = B.bit_length() + 1 if self.tiers else 1
        powers = torch.tensor([1 << k for k in range(levels - 1)], dtype=torch.long, device=dev)
        key = self.u_gbucket * levels + (torch.searchsorted(powers, cnt, right=True) if self.tiers else 0)
        n_tiers = self.bstart[-1] * levels
        tier_n = torch.bincount(key, minlength=n_tiers)
        tier_m = torch.zeros(n_tiers, dtype=torch.long, device=dev).scatter_reduce_(0, key, cnt, "amax")
        place = torch.empty_like(key).index_copy_(0, torch.argsort(key, stable=True),
                                                  torch.arange(len(key), device=dev))
        rank = place - (torch.cumsum(tier_n, 0) - tier_n).index_select(0, key)
        return PerturbedPairs(u, b, cnt, key, rank, tier_n.cpu().numpy().reshape(-1, levels),
                              tier_m.cpu().numpy().reshape(-1, levels))

    def _reads(self, s: int, pairs: PerturbedPairs, B: int) -> tuple[int, int, int, int]:
        """Stratum s's read elements and first-layer multiply-adds at this batch: (dense reads, perturbation-form
        reads, dense multiply-adds, perturbation-form multiply-adds)."""
        b0, b1 = self.bstart[s], self.bstart[s + 1]
        fan, width = self.bucket_fan[b0:b1, None], self.bucket_width[b0:b1, None]
        n = pairs.tier_n[b0:b1]
        cols = 1 + pairs.tier_m[b0:b1]
        return (int((n * fan).sum()) * B, int((n * cols * fan).sum()), int((n * fan * width).sum()) * B,
                int((n * cols * fan * width).sum()))

    def takes_form(self, s: int, pairs: PerturbedPairs, B: int) -> bool:
        dense, reads, dense_macs, macs = self._reads(s, pairs, B)
        if reads > self.max_read_ratio * dense or dense - reads < self.min_saved_reads:
            return False
        return self.read_cost is None or macs + self.read_cost * reads <= dense_macs

    def stratum(self, s: int, pairs: PerturbedPairs, B: int, genes: tuple | None, wild: torch.Tensor,
                entries: bool = True) -> StratumPairs:
        """The layout of stratum s for this batch (stratum 0: no children, its gene columns only). `pairs` from
        `counts`; `genes` the stratum's sparse gene entries (gene_weight index, flat row * B + b, value or None);
        `wild` [S + 1] the flat buffer position of each stratum's wild-type values (their row j at wild[s] + j;
        wild[S] = 0, the zero row); `entries`: lay out the perturbed entries one by one (`compact`, `z_entry`;
        PairTanhNorm needs only `terms` and `samp`)."""
        u_all, b_all, cnt = pairs.u, pairs.b, pairs.cnt
        dev = u_all.device
        shapes = self.bucket_shapes[s]
        b0, levels = self.bstart[s], pairs.tier_n.shape[1]
        tn, tm = pairs.tier_n[b0:self.bstart[s + 1]], pairs.tier_m[b0:self.bstart[s + 1]]
        tq, tl = np.nonzero(tn)  # the tiers, bucket by bucket, fewest perturbed samples first
        n_t, cols_t = tn[tq, tl], 1 + tm[tq, tl]
        w_t, k_t = self.bucket_width[b0 + tq], self.bucket_fan[b0 + tq]
        offsets = [np.cumsum(np.concatenate([[0], v]))[:-1] for v in
                   (n_t * w_t, n_t * w_t * cols_t, n_t * cols_t, n_t)]
        t_row, t_z, t_s, t_term = offsets
        local = np.full(tn.size, -1, dtype=np.int64)
        local[tq * levels + tl] = np.arange(len(tq))
        t_cols, t_zoff, t_soff, t_first, t_local = (torch.from_numpy(v).to(dev) for v in
                                                   (cols_t, t_z, t_s, t_term, local))
        u0, u1 = self.ustart[s], self.ustart[s + 1]
        T = u1 - u0
        g_u = t_local.index_select(0, pairs.key[u0:u1] - b0 * levels)  # every term's tier and place in it
        j_u = pairs.rank[u0:u1]
        order = inverse_permutation(t_first.index_select(0, g_u) + j_u)  # the terms (u - u0) in tier order
        # rows: z position of each row's wild-type column, and the rows in tier order
        row_term = getattr(self, f"row_term_{s}")
        R = len(row_term)
        g_r, j_r = g_u.index_select(0, row_term), j_u.index_select(0, row_term)
        w_r = self.u_bwidth[u0:u1].index_select(0, row_term)
        r = torch.arange(R, device=dev) - self.u_row0[u0:u1].index_select(0, row_term)
        z_wild = t_zoff.index_select(0, g_r) + (j_r * w_r + r) * t_cols.index_select(0, g_r)
        bucket_first = np.cumsum([0] + [n for n, _, _ in shapes])
        slots = [order[int(bucket_first[q]): int(bucket_first[q + 1])] - int(bucket_first[q])
                 for q in range(len(shapes))]
        # the perturbed samples of every term in its tier's [n, cols] block: column 0 the wild type (its index
        # written below), then its samples (padding: sample 0, whose columns are never read back)
        first = torch.cumsum(cnt, 0) - cnt
        p0, p1 = (int(v) for v in torch.searchsorted(u_all, torch.tensor([u0, u1], device=dev)))
        up, bp = u_all[p0:p1], b_all[p0:p1]
        k = torch.arange(p0, p1, device=dev) - first.index_select(0, up)
        g_p = g_u.index_select(0, up - u0)
        pair_cols = t_cols.index_select(0, g_p)
        samp = torch.zeros(int((n_t * cols_t).sum()), dtype=torch.long, device=dev)
        samp[t_soff.index_select(0, g_p) + j_u.index_select(0, up - u0) * pair_cols + 1 + k] = bp
        child_rows, child_wild = [], []  # every input row of the tiers with children, in tier order
        for q, (n, _, c) in enumerate(shapes):
            if c:
                child_rows.append(getattr(self, f"child_rows_{s}_{q}").index_select(0, slots[q]).view(-1))
                child_wild.append((wild.index_select(0, getattr(self, f"child_stratum_{s}_{q}").view(-1)).view(n, c) +
                                   getattr(self, f"child_off_{s}_{q}")).index_select(0, slots[q]).view(-1))
        with_c = k_t > 0
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        read = PairRead(torch.cat(child_rows) if child_rows else empty, torch.cat(child_wild) if child_wild else empty,
                        samp, *([int(v) for v in a[with_c]] for a in (n_t, k_t, cols_t, t_s)))
        compact = z_entry = None
        if entries:  # every pair's L_u rows
            length = self.u_width.index_select(0, up)
            size = int(length.sum())

            def spread(v: torch.Tensor) -> torch.Tensor:  # a per-pair value on each of the pair's entries
                return torch.repeat_interleave(v, length, output_size=size)

            r = torch.arange(size, device=dev) - spread(torch.cumsum(length, 0) - length)
            row0 = self.u_row0.index_select(0, up)
            rows = spread(row0) + r
            compact = Compact(rows, rows * B + spread(bp), None, None, None, size)
            z_entry = spread(z_wild.index_select(0, row0) + 1 + k) + r * spread(pair_cols)
        terms = torch.stack([self.u_row0[u0:u1], self.u_bwidth[u0:u1], self.u_width[u0:u1], cnt[u0:u1],
                             first[u0:u1] - p0, t_cols.index_select(0, g_u)])
        gene_part = None
        if genes is not None:
            w_idx, o_idx, value = genes
            rank = torch.full((T, B), -1, dtype=torch.long, device=dev)
            rank[up - u0, bp] = k
            g_rows = o_idx // B
            g_term = row_term.index_select(0, g_rows)
            k_g = rank.view(-1).index_select(0, g_term * B + o_idx % B)
            gene_part = (w_idx, z_wild.index_select(0, g_rows) + 1 + k_g, value)
        tiers = tuple(BucketRows(int(a), int(m), int(w)) for a, m, w in zip(t_row, n_t, w_t))
        inverse = [inverse_permutation(v) for v in slots]
        with_children = [q for q, (_, _, c) in enumerate(shapes) if c]
        weight_perm = (self.weight_blocks[s], [slots[q] for q in with_children], [inverse[q] for q in with_children])
        return StratumPairs(tuple(int(v) for v in cols_t), tiers, tuple(int(v) for v in k_t), weight_perm,
                            (self.row_blocks[s], slots, inverse),
                            read, compact, z_wild, z_entry, terms, bp, gene_part)
