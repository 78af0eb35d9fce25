"""The hidden truth of a simulated screen (simulator "modules", the default): a cell whose biology the model's
GO hierarchy only partly shows.

Modules. The truth is built from the unfiltered GO annotations of the model's genes (ontology.build.
annotation_modules: every term of the configured scope with the genes annotated to it or below, whatever the
evidence, no containment or redundancy filter) keeping terms of 2 .. `module_max_genes` genes. Then
a `truth_drop` share of the gene-to-module memberships is dropped, a `truth_move` share moved to another random
module, and `truth_novel` x (number of GO modules) modules that correspond to no GO term are added (random gene
sets whose sizes are drawn from the GO modules' sizes). Modules left with fewer than two genes are removed.
`truth_mismatch` (mismatch()) is the share of the truth's memberships (gene, module) that the model's
hierarchy does not hold: the module is no term of the hierarchy (a small complex the containment filter
dropped, a term outside the model's evidence codes, a novel module), or the term does not contain the gene.

Effects (log fitness is a sum; F(S) = exp(-load(S)) for a set S of deleted genes):

    load(S) = sum_{g in S} c_g                                         gene-specific costs
            + sum_{complex m} L_m [h_m(S) >= 1]                        a complex / linear pathway fails once
            + sum_{redundant m} B_m [h_m(S) >= 2]                      redundant members buffer one another
            + sum_{buffering pairs (m, m')} C_mm' [h_m >= 1][h_m' >= 1]  parallel pathways buffer one another

h_m(S) = |S ∩ m|. Gene costs: an `essential_fraction` of the genes is near-lethal (single fitness uniform in
[0.01, `essential_max_fitness`]); the others have c_g = `gene_cost_scale` x Lomax(`gene_cost_shape`), a heavy
tail (most deletions nearly neutral, a few strongly sick). Taken in random order, a module becomes a complex
with probability `complex_fraction` when it shares no gene with the complexes before it (complexes are
disjoint, so a gene pays at most one complex cost alone; L_m = `complex_cost` x Exp(1)); a module that is no
complex is redundant with probability `redundant_fraction` (B_m = `redundant_cost` x Exp(1)), else inert. `buffer_pairs` x (number of modules) pairs of gene-disjoint
modules buffer each other (C = `buffer_cost` x Exp(1)); with probability `buffer_sibling_bias` the partner is a
sibling (the two GO terms share a parent), otherwise any module.

Signs. Two genes of one complex interact positively (the second hit costs nothing more:
eps = F_a F_b (e^{L_m} - 1) > 0); two genes of one redundant module, or of two buffering modules, negatively
(eps = F_a F_b (e^{-B} - 1) < 0); genes without shared structure multiply (eps = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .csr import ragged_positions, row_of_entries


@dataclass(frozen=True)
class TruthModel:
    """The noise-free F(S) of the module docstring over the hierarchy's gene indices."""

    gene_cost: np.ndarray  # float64 [G], c_g
    module_offsets: np.ndarray  # int64 [G + 1]: CSR over genes of the modules containing each gene
    module_of: np.ndarray  # int64 [memberships]
    share: np.ndarray  # float64 [memberships], p_gm: the share of module m that gene g's loss removes
    complex_cost: np.ndarray  # float64 [M], L_m (0: not a pathway)
    redundant_cost: np.ndarray  # float64 [M], B_m (0: not redundant)
    buffer: sparse.csr_matrix  # float64 [M, M], symmetric, C_mm' (zero diagonal)
    module_ids: tuple[str, ...]  # [M] GO id, or "novel:<k>"
    essential: np.ndarray  # bool [G], the near-lethal genes

    @property
    def num_modules(self) -> int:
        return len(self.module_ids)

    def load(self, gene_indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """-log F(S) for each CSR genotype, float64 [N]."""
        n, m = len(offsets) - 1, self.num_modules
        rows = row_of_entries(offsets)
        load = np.bincount(rows, weights=self.gene_cost[gene_indices], minlength=n)
        per_gene = np.diff(self.module_offsets)[gene_indices]
        pair_row = np.repeat(rows, per_gene)
        pos = ragged_positions(self.module_offsets[gene_indices], per_gene)
        key, inverse, hits = np.unique(pair_row * m + self.module_of[pos], return_inverse=True,
                                       return_counts=True)  # h_m per (row, module)
        row, mod = key // m, key % m
        intact = np.exp(np.bincount(inverse, weights=np.log1p(-self.share[pos]), minlength=len(key)))
        load += np.bincount(row, weights=self.complex_cost[mod] * (1.0 - intact) +
                            self.redundant_cost[mod] * (hits >= 2), minlength=n)
        hit = sparse.csr_matrix((np.ones(len(row)), (row, mod)), shape=(n, m))
        load += 0.5 * np.asarray((hit @ self.buffer).multiply(hit).sum(axis=1)).ravel()
        return load

    def fitness(self, gene_indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Noise-free F(S) for each CSR genotype, float64 [N]."""
        return np.exp(-self.load(gene_indices, offsets))

    def mismatch(self, hierarchy_sets: dict[str, frozenset[int]]) -> float:
        """Share of the truth's (gene, module) memberships the hierarchy does not hold; `hierarchy_sets` maps
        each term id of the model's hierarchy to the gene indices it contains."""
        modules = np.repeat(np.arange(len(self.gene_cost)), np.diff(self.module_offsets))
        held = sum(int(g in hierarchy_sets.get(self.module_ids[m], ())) for g, m in zip(modules, self.module_of))
        return 1.0 - held / len(self.module_of)


def build_truth(cfg, gene_names: tuple[str, ...], modules: dict[str, frozenset[str]],
                parents: dict[str, frozenset[str]], rng: np.random.Generator) -> TruthModel:
    """Draw the truth of the module docstring from the unfiltered modules (term -> gene names) and their
    parents; `cfg` is the GenotypeConfig, `gene_names` the hierarchy's genes in index order."""
    index = {g: i for i, g in enumerate(gene_names)}
    go_ids = sorted(t for t, genes in modules.items() if 2 <= len(genes) <= cfg.module_max_genes)
    sets = [sorted(index[g] for g in modules[t]) for t in go_ids]
    num_genes = len(gene_names)

    # memberships: drop, move (to a random module), then novel modules
    member_mod = np.concatenate([np.full(len(s), k) for k, s in enumerate(sets)]) if sets else np.zeros(0, int)
    member_gene = np.fromiter((g for s in sets for g in s), dtype=np.int64, count=len(member_mod))
    fate = rng.random(len(member_mod))
    keep = fate >= cfg.truth_drop
    moved = keep & (fate < cfg.truth_drop + cfg.truth_move)
    member_mod = member_mod.astype(np.int64)
    if len(sets):
        member_mod[moved] = rng.integers(0, len(sets), int(moved.sum()))
    member_gene, member_mod = member_gene[keep], member_mod[keep]
    n_novel = int(round(cfg.truth_novel * len(sets)))
    sizes = np.array([len(s) for s in sets]) if sets else np.array([3])
    novel_sizes = np.minimum(rng.choice(sizes, n_novel), num_genes)
    novel = [rng.choice(num_genes, size=k, replace=False) for k in novel_sizes]
    ids = go_ids + [f"novel:{k}" for k in range(n_novel)]
    member_gene = np.concatenate([member_gene, *novel]).astype(np.int64)
    member_mod = np.concatenate([member_mod, *[np.full(len(s), len(sets) + k) for k, s in enumerate(novel)]])
    pairs = np.unique(member_mod * num_genes + member_gene)  # a move may land a gene in a module it is in
    member_mod, member_gene = pairs // num_genes, pairs % num_genes
    counts = np.bincount(member_mod, minlength=len(ids))
    alive = counts >= 2
    renumber = np.cumsum(alive) - 1
    ok = alive[member_mod]
    member_mod, member_gene = renumber[member_mod[ok]], member_gene[ok]
    ids = [t for t, a in zip(ids, alive) if a]
    num_modules = len(ids)

    # gene costs
    essential = rng.random(num_genes) < cfg.essential_fraction
    lethal = -np.log(rng.uniform(0.01, cfg.essential_max_fitness, num_genes))
    lomax = cfg.gene_cost_scale * (rng.random(num_genes) ** (-1.0 / cfg.gene_cost_shape) - 1.0)
    gene_cost = np.where(essential, lethal, lomax)

    members = [set() for _ in range(num_modules)]
    for g, m in zip(member_gene.tolist(), member_mod.tolist()):
        members[m].add(g)

    # module roles
    role = rng.random(num_modules)
    is_pathway = role < cfg.complex_fraction
    is_redundant = ~is_pathway & (role < cfg.complex_fraction + cfg.redundant_fraction)
    complex_cost = np.where(is_pathway, cfg.complex_cost * rng.exponential(1.0, num_modules), 0.0)
    redundant_cost = np.where(is_redundant, cfg.redundant_cost * rng.exponential(1.0, num_modules), 0.0)

    order = np.lexsort((member_mod, member_gene))  # by gene, then module
    module_of = member_mod[order].astype(np.int64)
    module_offsets = np.zeros(num_genes + 1, dtype=np.int64)
    np.cumsum(np.bincount(member_gene, minlength=num_genes), out=module_offsets[1:])
    # p_gm ~ U(pathway_min_share, 1) in at most `max_pathways_per_gene` of a gene's pathways (chosen at random),
    # 0 in the others: where GO nests many small terms, a gene's single-deletion cost stays bounded
    share = np.minimum(rng.uniform(cfg.pathway_min_share, 1.0, len(module_of)), 0.999)
    gene_of = np.repeat(np.arange(num_genes), np.diff(module_offsets))
    rank = np.empty(len(module_of), dtype=np.int64)
    by_gene = np.lexsort((rng.random(len(module_of)), ~is_pathway[module_of], gene_of))  # pathways first, shuffled
    rank[by_gene] = np.arange(len(module_of)) - module_offsets[gene_of[by_gene]]
    share[rank >= cfg.max_pathways_per_gene] = 0.0
    buffer = _buffer_pairs(cfg, ids, members, parents, rng)
    return TruthModel(gene_cost, module_offsets, module_of, share, complex_cost, redundant_cost, buffer, tuple(ids),
                      essential)


def _buffer_pairs(cfg, ids: list[str], members: list[set], parents: dict[str, frozenset[str]],
                  rng: np.random.Generator) -> sparse.csr_matrix:
    """Symmetric [M, M] costs of `buffer_pairs` x M pairs of gene-disjoint modules (siblings preferred)."""
    num = len(ids)
    by_parent: dict[str, list[int]] = {}
    for k, t in enumerate(ids):
        for p in parents.get(t, ()):
            by_parent.setdefault(p, []).append(k)
    siblings = [sorted({s for p in parents.get(t, ()) for s in by_parent[p]} - {k}) for k, t in enumerate(ids)]
    chosen: dict[tuple[int, int], float] = {}
    for _ in range(int(round(cfg.buffer_pairs * num)) if num >= 2 else 0):
        a = int(rng.integers(num))
        pool = siblings[a] if siblings[a] and rng.random() < cfg.buffer_sibling_bias else None
        b = int(pool[rng.integers(len(pool))]) if pool else int(rng.integers(num))
        if a == b or members[a] & members[b]:
            continue  # a gene in both would make the pair's cost part of its single-deletion cost
        chosen[(min(a, b), max(a, b))] = cfg.buffer_cost * rng.exponential(1.0)
    if not chosen:
        return sparse.csr_matrix((num, num))
    (a, b), cost = np.array(list(chosen)).T, np.array(list(chosen.values()))
    return sparse.csr_matrix((np.concatenate([cost, cost]), (np.concatenate([a, b]), np.concatenate([b, a]))),
                             shape=(num, num))
