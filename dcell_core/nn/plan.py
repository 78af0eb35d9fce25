"""Build-time layout of the stratum-parallel DCell: shape buckets, activation-buffer rows and gather indices.

Activation buffer (neuron-major, one column per sample): [rows, B]
    row 0                         always zero; padded fan-in slots gather it
    gene region                   the gene input features (d per gene), or with attention one [n, g_max, E]
                                  block of attended tokens per attention bucket
    stratum 0 buckets, stratum 1 buckets, ...   each bucket an [n, w_max] block of term outputs (padded rows
                                  exist but are never gathered)
A term's input I_t (children's rows in child order, then its gene rows) is read in two parts: the child rows padded
with row 0 up to its bucket's c_max and the gene rows padded up to g_max. The split lets the gene part skip its
input gradient (a genotype never needs one; in the direct width basis ~2/3 of the first-layer weights are gene
columns) while the child part gets its gradient scattered back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcell_core.nn.common import TermSizes


@dataclass
class BucketPlan:
    terms: list[int]  # term indices, in slot order
    width: int  # w_max: padded output width
    child_fan: int  # c_max: padded width of the children part of the input
    gene_fan: int  # g_max: padded width of the gene part of the input
    row_offset: int  # first buffer row of this bucket's [n, w_max] output block
    child_gather: np.ndarray  # [n * c_max] buffer rows of the children inputs (row 0 = padding)
    gene_gather: np.ndarray  # [n * g_max] buffer rows of the gene inputs (row 0 = padding)


@dataclass
class AttentionPlan:
    terms: list[int]  # terms with direct genes, in slot order
    genes: np.ndarray  # [n, g_max] gene index of each token slot (0 in padded slots)
    valid: np.ndarray  # [n, g_max] bool, False in padded slots
    row_offset: int  # first buffer row of this bucket's [n, g_max, E] token block


@dataclass
class Plan:
    num_rows: int
    gene_rows: tuple[int, int]  # [start, stop) of the gene region
    strata: list[list[BucketPlan]]
    attention: list[AttentionPlan]
    slot: list[tuple[int, int, int]]  # term -> (stratum, bucket, slot)
    head_order: np.ndarray  # [T] position of term t in the concatenation of all buckets' heads
    state_rows: np.ndarray  # [sum L_t] buffer row of every term neuron, in term order
    stats: dict = field(default_factory=dict)


def partition(shapes: list[tuple[int, int, int]], extra_layers: int, overhead: int,
              gene_cost: float = 1.0) -> list[list[int]]:
    """Split items of shape (width, child fan-in, gene fan-in) into buckets minimizing padded multiply-adds plus
    `overhead` per bucket.

    Cost of a bucket of n items: n x w_max x (c_max + gene_cost x g_max + extra_layers x w_max) + overhead
    (gene_cost < 1 where gene columns are applied sparsely and their padding costs no multiply-adds). Exact dynamic
    programming over contiguous runs of the distinct shapes sorted by each of a few keys; the cheapest partition
    wins. Returns lists of item positions; deterministic for a given multiset of shapes.
    """
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    distinct = sorted(groups)
    best_cost, best = np.inf, None
    keys = (lambda s: (s[1] + s[2], s[0]), lambda s: (s[0], s[1] + s[2]), lambda s: (s[0] * (s[1] + s[2]), s),
            lambda s: (s[1], s[2], s[0]), lambda s: (s[2], s[1], s[0]))
    for key in keys:
        order = sorted(distinct, key=key)
        cost, cuts = _dp(order, [len(groups[s]) for s in order], extra_layers, overhead, gene_cost)
        if cost < best_cost:
            best_cost, best = cost, [[i for s in order[a:b] for i in groups[s]] for a, b in cuts]
    return best


def _dp(order, counts, extra_layers: int, overhead: int, gene_cost: float):
    w, c, g = (np.array([s[k] for s in order], dtype=np.float64) for k in range(3))
    n_of = np.array(counts, dtype=np.float64)
    n = len(order)
    cost = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # candidate buckets order[i:j] for i = j-1, j-2, ..., 0 (reversed so running maxima are cumulative)
        w_max = np.maximum.accumulate(w[j - 1::-1])
        c_max = np.maximum.accumulate(c[j - 1::-1])
        g_max = np.maximum.accumulate(g[j - 1::-1])
        n_items = np.cumsum(n_of[j - 1::-1])
        total = cost[j - 1::-1] + n_items * w_max * (c_max + gene_cost * g_max + extra_layers * w_max) + overhead
        k = int(np.argmin(total))
        cost[j], start[j] = total[k], j - 1 - k
    cuts, j = [], n
    while j > 0:
        cuts.append((int(start[j]), j))
        j = int(start[j])
    return cost[n], cuts[::-1]


def build_plan(sizes: TermSizes, layers: int, attention: bool, overhead: int, gene_cost: float = 1.0) -> Plan:
    T, E = sizes.num_terms, sizes.token_dim
    strata = sizes.strata()
    next_row = 1  # row 0 is the zero row
    gene_start = next_row
    attn_plans: list[AttentionPlan] = []
    gene_rows_of: list[list[int]] = [[] for _ in range(T)]
    if attention:
        with_genes = [t for t in range(T) if sizes.direct_genes[t]]
        counts = [len(sizes.direct_genes[t]) for t in with_genes]
        for members in partition([(k, k, 0) for k in counts], 0, overhead):
            terms = [with_genes[i] for i in members]
            g_max = max(len(sizes.direct_genes[t]) for t in terms)
            genes = np.zeros((len(terms), g_max), dtype=np.int64)
            valid = np.zeros((len(terms), g_max), dtype=bool)
            for i, t in enumerate(terms):
                g = sizes.direct_genes[t]
                genes[i, :len(g)], valid[i, :len(g)] = g, True
                base = next_row + i * g_max * E
                gene_rows_of[t] = list(range(base, base + len(g) * E))
            attn_plans.append(AttentionPlan(terms, genes, valid, next_row))
            next_row += len(terms) * g_max * E
    else:
        next_row += sizes.num_genes * E
        for t in range(T):
            gene_rows_of[t] = [gene_start + g * E + e for g in sizes.direct_genes[t] for e in range(E)]
    gene_stop = next_row

    out_rows: list[list[int]] = [[] for _ in range(T)]  # buffer rows of O_t (true width)
    slot: list[tuple[int, int, int]] = [(-1, -1, -1)] * T
    stratum_plans: list[list[BucketPlan]] = []
    head_pos = np.zeros(T, dtype=np.int64)
    n_heads = 0
    padded, real = 0, 0
    for s in range(max(strata) + 1):
        terms_s = [t for t in range(T) if strata[t] == s]
        child_fans = [sizes.fan_in(t) - len(sizes.direct_genes[t]) * E for t in terms_s]
        shapes = [(sizes.widths[t], cf, sizes.fan_in(t) - cf) for t, cf in zip(terms_s, child_fans)]
        buckets = []
        for k, members in enumerate(partition(shapes, layers - 1, overhead, gene_cost)):
            terms = [terms_s[i] for i in members]
            w_max = max(shapes[i][0] for i in members)
            c_max = max(shapes[i][1] for i in members)
            g_max = max(shapes[i][2] for i in members)
            child_gather = np.zeros((len(terms), c_max), dtype=np.int64)
            gene_gather = np.zeros((len(terms), g_max), dtype=np.int64)
            for i, t in enumerate(terms):
                rows = [r for c in sizes.children[t] for r in out_rows[c]]
                child_gather[i, :len(rows)] = rows
                gene_gather[i, :len(gene_rows_of[t])] = gene_rows_of[t]
                out_rows[t] = list(range(next_row + i * w_max, next_row + i * w_max + sizes.widths[t]))
                slot[t] = (s, k, i)
                head_pos[t] = n_heads + i
                real += sizes.widths[t] * (sizes.fan_in(t) + (layers - 1) * sizes.widths[t])
            padded += len(terms) * w_max * (c_max + g_max + (layers - 1) * w_max)
            buckets.append(BucketPlan(terms, w_max, c_max, g_max, next_row, child_gather.reshape(-1),
                                      gene_gather.reshape(-1)))
            next_row += len(terms) * w_max
            n_heads += len(terms)
        stratum_plans.append(buckets)
    state_rows = np.array([r for t in range(T) for r in out_rows[t]], dtype=np.int64)
    stats = {"buckets": sum(len(b) for b in stratum_plans), "attention_buckets": len(attn_plans),
             "weights": real, "padded_weights": padded}
    return Plan(next_row, (gene_start, gene_stop), stratum_plans, attn_plans, slot, head_pos, state_rows, stats)
