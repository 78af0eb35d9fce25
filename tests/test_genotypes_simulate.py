"""Simulator: determinism, sampling invariants, the generative function by hand, learnable interactions."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dcell_core.genotypes import GenotypeConfig, csr_from_lists, simulate_genotypes
from dcell_core.genotypes.simulate import FitnessModel
from dcell_core.ontology.hierarchy import Hierarchy

DATA = Path(__file__).parent / "data" / "genotypes"
# toy hierarchy: 18 genes; non-root terms A (7 genes), B (6), C (7) bound the within-term draws
SMALL = dict(simulator="hierarchy_aligned", noise_slope=0.0, num_doubles=100, num_triples=160, related_fraction=0.5)


@pytest.fixture(scope="module")
def toy() -> Hierarchy:
    spec = json.loads((DATA / "toy_hierarchy.json").read_text())
    return Hierarchy.from_mappings(spec["children"], spec["direct_genes"], spec["names"])


def _rows(sim) -> list[tuple[int, ...]]:
    return [tuple(sim.gene_indices[a:b].tolist()) for a, b in zip(sim.offsets[:-1], sim.offsets[1:])]


def test_same_seed_same_data_other_seed_differs(toy):
    a = simulate_genotypes(toy, GenotypeConfig(seed=3, **SMALL))
    b = simulate_genotypes(toy, GenotypeConfig(seed=3, **SMALL))
    c = simulate_genotypes(toy, GenotypeConfig(seed=4, **SMALL))
    assert np.array_equal(a.gene_indices, b.gene_indices) and np.array_equal(a.fitness, b.fitness)
    assert not np.array_equal(a.model.term_weights, c.model.term_weights)
    assert _rows(a) != _rows(c)
    assert not np.allclose(a.fitness[:18], c.fitness[:18])  # same singles, other weights and noise


def test_genotype_sets_are_distinct_sorted_and_counted(toy):
    sim = simulate_genotypes(toy, GenotypeConfig(seed=0, **SMALL))
    rows = _rows(sim)
    assert rows[:18] == [(g,) for g in range(18)]  # num_singles=-1: every gene once
    doubles, triples = rows[18:118], rows[118:]
    assert all(len(r) == 2 for r in doubles) and all(len(r) == 3 for r in triples) and len(triples) == 160
    assert len(set(rows)) == len(rows)
    assert all(list(r) == sorted(set(r)) for r in rows)
    assert sim.stats["order2_within_term"] == 50 and sim.stats["order3_within_term"] == 80


def test_within_term_draws_share_a_non_root_term(toy):
    sim = simulate_genotypes(toy, GenotypeConfig(seed=1, **SMALL))
    contained = [s for t, s in enumerate(toy.contained_gene_sets()) if t != toy.root]
    rows = _rows(sim)
    related = rows[18:68] + rows[118:198]  # the first round(count * related_fraction) of each order
    assert all(any(set(r) <= s for s in contained) for r in related)


def test_more_sets_than_possible_is_an_error(toy):
    with pytest.raises(ValueError, match="cannot draw 154 distinct 2-gene"):  # C(18, 2) = 153
        simulate_genotypes(toy, GenotypeConfig(simulator="hierarchy_aligned", num_doubles=154, num_triples=0))
    with pytest.raises(ValueError, match="within-term 2-gene"):  # only 54 pairs share a non-root term
        simulate_genotypes(toy, GenotypeConfig(simulator="hierarchy_aligned", num_doubles=120, num_triples=0, related_fraction=0.5))


def test_fitness_model_by_hand(toy):
    """Weights only on A1 (3 genes) and C1 (4 genes, shares YBL001C with A2); theta 0.5, hill 2."""
    weights = np.zeros(toy.num_terms)
    terms, genes = toy.term_index, toy.gene_index
    weights[terms["GO:0000011"]], weights[terms["GO:0000031"]] = 1.0, 2.0
    model = FitnessModel.from_hierarchy(toy, weights, threshold=0.5, hill=2.0)
    sets = [["YAL001C"], ["YAL001C", "YAL002W"], ["YHL001C"], ["YBL001C"], ["YAL001C", "YBL001C"]]
    flat, offsets = csr_from_lists([[genes[g] for g in s] for s in sets])
    # d(f) = f^2 / (f^2 + 1/4): A1 f=1/3 -> 4/13, f=2/3 -> 16/25; C1 f=1/4 -> 1/5
    expected = [math.exp(-4 / 13), math.exp(-16 / 25), 1.0, math.exp(-2 / 5), math.exp(-4 / 13 - 2 / 5)]
    assert np.allclose(model.fitness(flat, offsets), expected, rtol=1e-12)


def test_noise_has_the_configured_scale(toy):
    exact = simulate_genotypes(toy, GenotypeConfig(noise_std=0.0, **SMALL))
    assert np.array_equal(exact.fitness, exact.fitness_true)
    noisy = simulate_genotypes(toy, GenotypeConfig(noise_std=0.05, **SMALL))
    residual = noisy.fitness - noisy.fitness_true
    assert 0.04 < residual.std() < 0.06 and abs(residual.mean()) < 0.01  # 278 draws of N(0, 0.05^2)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return 1.0 - float(((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_additive_gene_model_fits_held_out_data_worse_than_the_true_function(toy, seed):
    sim = simulate_genotypes(toy, GenotypeConfig(seed=seed, **SMALL))
    n, g = len(sim.fitness), toy.num_genes
    x = np.zeros((n, g + 1))  # dense 0/1 disruption matrix plus an intercept column
    x[np.repeat(np.arange(n), np.diff(sim.offsets)), sim.gene_indices] = 1.0
    x[:, g] = 1.0
    order = np.random.default_rng(100 + seed).permutation(n)
    train, test = order[: n // 2], order[n // 2:]
    ridge = 1e-3 * np.eye(g + 1)
    coef = np.linalg.solve(x[train].T @ x[train] + ridge, x[train].T @ sim.fitness[train])
    y = sim.fitness[test]
    r2_additive = _r2(y, x[test] @ coef)
    r2_true = _r2(y, sim.fitness_true[test])
    assert r2_true > 0.97  # noise 0.02 against a fitness spread of ~0.2
    assert r2_true - r2_additive > 0.05, (r2_true, r2_additive)
