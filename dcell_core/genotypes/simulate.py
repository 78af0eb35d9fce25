"""Simulated deletion screens: genotypes, a noise-free fitness F(S) and a noisy measurement.

Two generative models (`GenotypeConfig.simulator`):

* "modules" (the default, truth.py): a hidden biology built from the unfiltered GO annotations, partly unlike
  the model's hierarchy, with gene-specific costs, a near-lethal gene set, and negative and positive
  interactions calibrated to the Costanzo 2016 screen (docs/genotypes.md).
* "hierarchy_aligned" (below): fitness built on exactly the model's own terms, so its structure is right by
  construction; for learnability tests.

Both draw genotypes the same way (below) and measure F(S) + N(0, sd(F)^2) with sd(F) = noise_std +
noise_slope (1 - F): noise grows as fitness falls.

The "hierarchy_aligned" model (knobs in `GenotypeConfig`, defaults in brackets):

* Every term t has a fitness weight w_t = weight_scale [0.5] * Exp(1), drawn once per seed.
* A genotype S (a set of deleted genes) hits h_t = |S ∩ G_t| of the n_t genes contained in t (G_t = genes
  annotated to t or any descendant). The term loses function according to a Hill curve of the hit fraction,

      d_t(S) = f^q / (f^q + theta^q),   f = h_t / n_t,   theta = threshold [0.25],  q = hill [4].

  With q > 1 the curve is flat near zero: a term buffers one hit (redundant members) and fails when several
  of its genes are hit together. Small terms (complexes) fail after one or two hits, large terms almost never.
* Fitness is multiplicative over terms: F(S) = exp(-sum_t w_t d_t(S)).

Genes that share a small term therefore interact negatively (synthetic sickness: F(ab) < F(a) F(b)), genes in
unrelated terms combine multiplicatively. An additive per-gene model cannot express this, a model that follows
the hierarchy can. Genotypes: every gene (or `num_singles` of them) as a single deletion, then `num_doubles`
and `num_triples` distinct multi-gene deletions; a `related_fraction` [0] of these draws its genes from one
non-root term of the hierarchy (a bias toward related genes), the rest from all genes uniformly (genome-wide, as
SGA crosses every query with every array strain).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from dcell_core.ontology.hierarchy import Hierarchy

from .config import SHARED_SIMULATOR_FIELDS, SIMULATOR_FIELDS, GenotypeConfig, validate_config
from .csr import ragged_positions, row_of_entries
from .truth import TruthModel, build_truth

EPS_CUTOFF = 0.08  # |eps| above which a double mutant counts as interacting (Costanzo 2016 intermediate cutoff)

_MAX_ROUNDS = 64  # rejection rounds when drawing distinct genotypes before giving up with an error


@dataclass(frozen=True)
class FitnessModel:
    """The noise-free generative function F(S) of the module docstring, bound to one hierarchy."""

    term_weights: np.ndarray  # float64 [T], w_t
    contained_counts: np.ndarray  # int64 [T], n_t
    gene_term_offsets: np.ndarray  # int64 [G + 1]: CSR over genes of the terms containing each gene
    gene_terms: np.ndarray  # int64 [sum_g |terms containing g|]
    threshold: float
    hill: float

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, weights: np.ndarray, threshold: float, hill: float) -> "FitnessModel":
        """Index the gene -> containing-term relation once; weights are float [T]."""
        members = [[] for _ in range(hierarchy.num_genes)]
        for t, genes in enumerate(hierarchy.contained_gene_sets()):
            for g in genes:
                members[g].append(t)
        offsets = np.zeros(hierarchy.num_genes + 1, dtype=np.int64)
        np.cumsum([len(m) for m in members], out=offsets[1:])
        flat = np.fromiter((t for m in members for t in m), dtype=np.int64, count=int(offsets[-1]))
        counts = np.asarray(hierarchy.contained_counts, dtype=np.int64)
        return cls(np.asarray(weights, dtype=np.float64), counts, offsets, flat, float(threshold), float(hill))

    def term_damage(self, gene_indices: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse d_t(S) for every (genotype, hit term) pair: (row [P], term [P], damage [P])."""
        num_terms = len(self.term_weights)
        rows = row_of_entries(offsets)  # [nnz]
        per_gene = np.diff(self.gene_term_offsets)[gene_indices]  # terms containing each entry's gene
        pair_row = np.repeat(rows, per_gene)
        pos = ragged_positions(self.gene_term_offsets[gene_indices], per_gene)
        key, hits = np.unique(pair_row * num_terms + self.gene_terms[pos], return_counts=True)  # h_t per pair
        row, term = key // num_terms, key % num_terms
        frac_q = (hits / self.contained_counts[term]) ** self.hill
        return row, term, frac_q / (frac_q + self.threshold ** self.hill)

    def fitness(self, gene_indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Noise-free F(S) for each CSR genotype, float64 [N]."""
        row, term, damage = self.term_damage(gene_indices, offsets)
        load = np.bincount(row, weights=self.term_weights[term] * damage, minlength=len(offsets) - 1)
        return np.exp(-load)


@dataclass(frozen=True)
class SimulatedGenotypes:
    gene_indices: np.ndarray  # int64 [nnz], CSR genotypes (singles, then doubles, then triples)
    offsets: np.ndarray  # int64 [N + 1]
    fitness: np.ndarray  # float64 [N], measured = noise-free + noise
    fitness_true: np.ndarray  # float64 [N], noise-free F(S)
    model: FitnessModel | TruthModel
    stats: dict  # counts per order, how many were drawn inside a term, and the "simulation" statistics


def simulate_genotypes(hierarchy: Hierarchy, cfg: GenotypeConfig, base_dir=None,
                       modules: tuple[dict, dict] | None = None) -> SimulatedGenotypes:
    """Draw genotypes and their fitness under cfg.simulator's model; deterministic in cfg.seed.

    "modules" builds its truth from the unfiltered annotations behind the hierarchy (its provenance config,
    files resolved against base_dir), or from `modules` = (term -> gene names, term -> parent terms) when given."""
    validate_config(cfg)
    truth_ss, singles_ss, doubles_ss, triples_ss, noise_ss = np.random.SeedSequence(cfg.seed).spawn(5)
    if cfg.simulator == "hierarchy_aligned":
        weights = cfg.weight_scale * np.random.default_rng(truth_ss).exponential(1.0, hierarchy.num_terms)
        model = FitnessModel.from_hierarchy(hierarchy, weights, cfg.threshold, cfg.hill)
        mismatch = 0.0
    else:
        terms, parents = _annotation_modules(hierarchy, base_dir) if modules is None else modules
        model = build_truth(cfg, hierarchy.genes, terms, parents, np.random.default_rng(truth_ss))
        sets = hierarchy.contained_gene_sets()
        mismatch = model.mismatch({t: sets[i] for i, t in enumerate(hierarchy.terms)})
    groups, stats = [_singles(hierarchy.num_genes, cfg.num_singles, np.random.default_rng(singles_ss))], {}
    stats["singles"] = len(groups[0])
    for k, count, ss in ((2, cfg.num_doubles, doubles_ss), (3, cfg.num_triples, triples_ss)):
        sets_k, related = _multi(hierarchy, k, count, cfg.related_fraction, np.random.default_rng(ss))
        groups.append(sets_k)
        stats[f"order{k}"], stats[f"order{k}_within_term"] = len(sets_k), related
    gene_indices, offsets = _to_csr(groups)
    fitness_true = model.fitness(gene_indices, offsets)
    sd = cfg.noise_std + cfg.noise_slope * (1.0 - np.clip(fitness_true, 0.0, 1.0))
    noise = np.random.default_rng(noise_ss).normal(0.0, 1.0, len(fitness_true)) * sd
    stats["simulation"] = {"simulator": cfg.simulator, "truth_mismatch": mismatch,
                           **interaction_stats(model, hierarchy.num_genes, groups[1]), **_truth_counts(model)}
    return SimulatedGenotypes(gene_indices, offsets, fitness_true + noise, fitness_true, model, stats)


def interaction_stats(model, num_genes: int, doubles: np.ndarray) -> dict:
    """Interaction statistics of the noise-free truth over the sampled doubles [n, 2]: eps = F_ab - F_a F_b, the
    share with |eps| > EPS_CUTOFF and the positive share of those; and the single-deletion fitness of every gene
    (quantiles, near-lethal share F < 0.2)."""
    singles = model.fitness(np.arange(num_genes, dtype=np.int64), np.arange(num_genes + 1, dtype=np.int64))
    out = {"single_fitness_quantiles": {q: float(np.quantile(singles, float(q))) for q in
                                        ("0.05", "0.1", "0.25", "0.5", "0.75", "0.95")},
           "single_near_lethal_share": float((singles < 0.2).mean())}
    if len(doubles) == 0:
        return {**out, "frac_abs_eps_gt_0.08": None, "positive_share": None, "doubles": 0}
    flat, offsets = _to_csr([doubles])
    eps = model.fitness(flat, offsets) - singles[doubles[:, 0]] * singles[doubles[:, 1]]
    strong = np.abs(eps) > EPS_CUTOFF
    return {**out, "doubles": int(len(doubles)), "frac_abs_eps_gt_0.08": float(strong.mean()),
            "positive_share": float((eps[strong] > 0).mean()) if strong.any() else None,
            "negative_interactions": int((strong & (eps < 0)).sum()),
            "positive_interactions": int((strong & (eps > 0)).sum())}


def _truth_counts(model) -> dict:
    if not isinstance(model, TruthModel):
        return {}
    return {"modules": model.num_modules, "novel_modules": sum(t.startswith("novel:") for t in model.module_ids),
            "complexes": int((model.complex_cost > 0).sum()), "redundant_modules": int((model.redundant_cost > 0).sum()),
            "buffering_pairs": int(model.buffer.nnz // 2), "near_lethal_genes": int(model.essential.sum())}


def _annotation_modules(hierarchy: Hierarchy, base_dir) -> tuple[dict, dict]:
    """The unfiltered GO modules over the hierarchy's genes, from the ontology config it was built with."""
    from dcell_core.ontology.build import annotation_modules
    from dcell_core.ontology.config import OntologyConfig

    config = hierarchy.provenance.get("config")
    if not config:
        raise ValueError("simulator 'modules' builds its truth from the GO annotations behind the hierarchy, but this "
                         "hierarchy carries no ontology config (built by hand): pass modules=, or use "
                         "simulator=hierarchy_aligned")
    return annotation_modules(OntologyConfig(**config), base_dir, frozenset(hierarchy.genes))


def simulation_settings(cfg: GenotypeConfig) -> dict:
    """The config fields that determine simulated data (they enter the dataset cache key)."""
    names = SHARED_SIMULATOR_FIELDS + SIMULATOR_FIELDS[cfg.simulator]
    return {n: getattr(cfg, n) for n in names}


# ---- sampling ----------------------------------------------------------------------------------------------
def _singles(num_genes: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n, 1]: every gene (count == -1) or `count` distinct genes, sorted."""
    if count > num_genes:
        raise ValueError(f"num_singles={count} exceeds the {num_genes} genes of the hierarchy")
    genes = np.arange(num_genes) if count == -1 else np.sort(rng.choice(num_genes, count, replace=False))
    return genes.astype(np.int64)[:, None]


def _multi(hierarchy: Hierarchy, k: int, count: int, related_fraction: float,
           rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`count` distinct sorted k-gene sets, int64 [count, k]; the first round(count * related_fraction)
    are drawn inside one non-root term. Returns the sets and how many were drawn inside a term."""
    num_genes = hierarchy.num_genes
    if count > comb(num_genes, k):
        raise ValueError(f"cannot draw {count} distinct {k}-gene genotypes from {num_genes} genes")
    n_related = int(round(count * related_fraction))
    taken = np.empty(0, dtype=np.int64)  # codes of the sets drawn so far (shared by both kinds)
    related, taken = _distinct(_term_drawer(hierarchy, k, rng), n_related, k, num_genes, taken, "within-term")

    def uniform_draw(m: int) -> np.ndarray:
        return rng.integers(0, num_genes, size=(m, k))  # [m, k] genes from anywhere

    uniform, _ = _distinct(uniform_draw, count - n_related, k, num_genes, taken, "uniform")
    return np.concatenate([related, uniform]), n_related


def _term_drawer(hierarchy: Hierarchy, k: int, rng: np.random.Generator):
    """A function m -> int64 [m, k] of gene draws (with repeats) from one random non-root term per row."""
    contained = hierarchy.contained_gene_sets()
    terms = [t for t in range(hierarchy.num_terms) if t != hierarchy.root and len(contained[t]) >= k]
    sizes = np.array([len(contained[t]) for t in terms], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = np.fromiter((g for t in terms for g in sorted(contained[t])), dtype=np.int64, count=int(sizes.sum()))

    def draw(m: int) -> np.ndarray:
        if not terms:
            raise ValueError(f"no non-root term contains >= {k} genes: set related_fraction=0")
        pick = rng.integers(0, len(terms), size=m)
        pos = np.floor(rng.random((m, k)) * sizes[pick, None]).astype(np.int64)  # [m, k] within-term ranks
        return flat[starts[pick, None] + pos]

    return draw


def _distinct(draw, count: int, k: int, num_genes: int, taken: np.ndarray,
              label: str) -> tuple[np.ndarray, np.ndarray]:
    """Collect `count` new sorted k-sets from repeated vectorized draws, rejecting repeats and `taken` codes.

    Returns the sets int64 [count, k] and `taken` extended by their codes."""
    out = np.empty((0, k), dtype=np.int64)
    for round_ in range(_MAX_ROUNDS):
        need = count - len(out)
        if need <= 0:
            break
        # draws grow geometrically so that rarely drawn sets are reached near saturation
        cand = np.sort(draw((2 * need + 16) << min(round_, 8)), axis=1)  # [m, k]
        cand = cand[(np.diff(cand, axis=1) > 0).all(axis=1)]  # genes distinct within the set
        codes = cand @ (num_genes ** np.arange(k - 1, -1, -1, dtype=np.int64))  # one int64 per set
        first = np.sort(np.unique(codes, return_index=True)[1])  # first draw of each set, in draw order
        keep = first[~np.isin(codes[first], taken)][:need]
        taken = np.concatenate([taken, codes[keep]])
        out = np.concatenate([out, cand[keep]])
    if len(out) < count:
        raise ValueError(f"found only {len(out)} of {count} distinct {label} {k}-gene genotypes after "
                         f"{_MAX_ROUNDS} rounds; lower the count or related_fraction")
    return out, taken


def _to_csr(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack [n_k, k] blocks (rows already sorted) into CSR arrays."""
    lengths = np.concatenate([np.full(len(g), g.shape[1], dtype=np.int64) for g in groups])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate([g.ravel() for g in groups]).astype(np.int64), offsets


