"""The default simulator ("modules"): a hidden truth unlike the model's hierarchy, gene-specific costs, both signs
of interaction, genome-wide sampling, fitness-dependent noise, calibration to the Costanzo 2016 statistics,
determinism and separate random streams, the `simulation` block of `python -m dcell_core.genotypes --json`,
and the per-gene baselines."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import env_for, run_python
from omegaconf import OmegaConf
from scipy import sparse

from dcell_core.config import compose, ontology_config
from dcell_core.data import load_run_hierarchy
from dcell_core.genotypes import GenotypeConfig, build_dataset, csr_from_lists, simulate_genotypes
from dcell_core.genotypes.truth import TruthModel
from dcell_core.ontology.build import annotation_modules
from dcell_core.train.baselines import fit_baselines


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo hierarchy (DNA repair, real GO snapshot), its default genotype config and unfiltered modules."""
    cfg = compose(["data=yeast_dna_repair"])
    hierarchy = load_run_hierarchy(cfg, tmp_path_factory.mktemp("cache"))
    modules = annotation_modules(ontology_config(cfg), cfg.base_dir, frozenset(hierarchy.genes))
    return hierarchy, OmegaConf.to_object(cfg.data.genotypes), modules


@pytest.fixture(scope="module")
def default_sim(demo):
    hierarchy, gcfg, modules = demo
    return simulate_genotypes(hierarchy, gcfg, modules=modules)


def _fitness(model, rows):
    flat, offsets = csr_from_lists(rows)
    return model.fitness(flat, offsets)


# ---- the truth's mechanisms, on a hand-made truth --------------------------------------------------------------
def test_interaction_signs_follow_the_mechanism():
    """Genes 0, 1 share a pathway (positive), 2, 3 a redundant module (negative), 4 and 5 sit in two modules that
    buffer each other (negative), 6 and 7 share nothing (multiplicative: eps exactly 0)."""
    module_genes = [[0, 1], [2, 3], [4], [5]]  # modules 2 and 3 have one gene each, enough for a buffering pair
    gene_of = [(g, m) for m, genes in enumerate(module_genes) for g in genes]
    gene_of.sort()
    offsets = np.zeros(9, dtype=np.int64)
    np.cumsum(np.bincount([g for g, _ in gene_of], minlength=8), out=offsets[1:])
    buffer = sparse.csr_matrix(([0.5, 0.5], ([2, 3], [3, 2])), shape=(4, 4))
    model = TruthModel(gene_cost=np.full(8, 0.05), module_offsets=offsets,
                       module_of=np.array([m for _, m in gene_of]), share=np.full(len(gene_of), 0.999),
                       complex_cost=np.array([0.6, 0.0, 0.0, 0.0]), redundant_cost=np.array([0.0, 0.7, 0.0, 0.0]),
                       buffer=buffer, module_ids=("GO:1", "GO:2", "GO:3", "novel:0"), essential=np.zeros(8, bool))
    single = _fitness(model, [[g] for g in range(8)])
    eps = {pair: _fitness(model, [list(pair)])[0] - single[pair[0]] * single[pair[1]]
           for pair in ((0, 1), (2, 3), (4, 5), (6, 7))}
    assert eps[(0, 1)] > 0.05  # a second hit in a failed pathway costs (almost) nothing
    assert eps[(2, 3)] < -0.05 and eps[(4, 5)] < -0.05
    assert eps[(6, 7)] == pytest.approx(0.0, abs=1e-12)
    # single costs: a pathway member pays its share of the pathway, a redundant or buffering member nothing more
    assert single[0] == pytest.approx(np.exp(-0.05 - 0.6 * 0.999))
    assert single[2] == pytest.approx(np.exp(-0.05)) and single[4] == pytest.approx(np.exp(-0.05))


def test_mismatch_is_zero_for_the_hierarchy_itself_and_grows_with_drops(demo):
    hierarchy, gcfg, _ = demo
    sets = hierarchy.contained_gene_sets()
    own = ({t: frozenset(hierarchy.genes[g] for g in sets[i]) for i, t in enumerate(hierarchy.terms)
            if t != hierarchy.terms[hierarchy.root]}, {})
    exact = dataclasses.replace(gcfg, truth_drop=0.0, truth_move=0.0, truth_novel=0.0, module_max_genes=10_000,
                                num_doubles=50, num_triples=0)
    assert simulate_genotypes(hierarchy, exact, modules=own).stats["simulation"]["truth_mismatch"] == 0.0
    moved = dataclasses.replace(exact, truth_move=0.3)
    mismatch = simulate_genotypes(hierarchy, moved, modules=own).stats["simulation"]["truth_mismatch"]
    assert 0.2 < mismatch < 0.4  # about the moved share (a move can land in a term that holds the gene)
    with_novel = dataclasses.replace(exact, truth_novel=0.5)
    assert simulate_genotypes(hierarchy, with_novel, modules=own).stats["simulation"]["truth_mismatch"] > 0.1


# ---- the default sample of the demo --------------------------------------------------------------------------
def test_default_is_calibrated_to_costanzo_2016(default_sim):
    s = default_sim.stats["simulation"]
    assert s["simulator"] == "modules"
    assert 0.02 <= s["frac_abs_eps_gt_0.08"] <= 0.08
    assert 0.25 <= s["positive_share"] <= 0.50
    assert s["negative_interactions"] > 0 and s["positive_interactions"] > 0
    assert 0.0 < s["truth_mismatch"] < 1.0  # the model's wiring is partly wrong, not unrelated


def test_single_mutants_have_a_near_lethal_mode_and_a_heavy_tail(default_sim):
    single = default_sim.fitness_true[:default_sim.stats["singles"]]
    near_lethal = (single < 0.2).mean()
    assert 0.10 <= near_lethal <= 0.25  # about yeast's essential share (one in six)
    healthy = single[single >= 0.2]
    assert np.median(healthy) > 0.9  # most deletions are nearly neutral ...
    assert (healthy < 0.8).mean() > 0.02  # ... a tail is strongly sick
    counts, _ = np.histogram(single, bins=10, range=(0, 1))
    assert counts[0] > counts[1:8].max()  # a mode at lethality, separate from the healthy mode
    assert counts[-1] > counts[1:8].max()


def test_sampling_is_genome_wide_by_default(default_sim, demo):
    hierarchy, _, _ = demo
    stats = default_sim.stats
    assert stats["order2_within_term"] == 0 and stats["order3_within_term"] == 0
    doubles = default_sim.gene_indices[stats["singles"]:stats["singles"] + 2 * stats["order2"]].reshape(-1, 2)
    assert np.unique(doubles).size > 0.95 * hierarchy.num_genes
    # the share of doubles inside one non-root term matches uniform draws over gene pairs
    sets = [s for i, s in enumerate(hierarchy.contained_gene_sets()) if i != hierarchy.root]
    inside = np.array([any(a in s and b in s for s in sets) for a, b in doubles[:2000]])
    pairs = np.random.default_rng(0).choice(hierarchy.num_genes, size=(4000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]][:2000]
    expected = np.mean([any(a in s and b in s for s in sets) for a, b in pairs])
    assert abs(inside.mean() - expected) < 0.05


def test_noise_grows_as_fitness_falls(demo):
    hierarchy, gcfg, modules = demo
    sim = simulate_genotypes(hierarchy, dataclasses.replace(gcfg, noise_std=0.02, noise_slope=0.1), modules=modules)
    residual = sim.fitness - sim.fitness_true
    sick, healthy = residual[sim.fitness_true < 0.3], residual[sim.fitness_true > 0.9]
    assert sick.std() == pytest.approx(0.02 + 0.1 * (1 - sim.fitness_true[sim.fitness_true < 0.3].mean()), rel=0.15)
    assert healthy.std() == pytest.approx(0.02 + 0.1 * (1 - sim.fitness_true[sim.fitness_true > 0.9].mean()), rel=0.15)
    assert sick.std() > 2 * healthy.std()


def test_determinism_and_separate_streams(demo, default_sim):
    hierarchy, gcfg, modules = demo
    again = simulate_genotypes(hierarchy, gcfg, modules=modules)
    assert np.array_equal(again.fitness, default_sim.fitness) and np.array_equal(again.offsets, default_sim.offsets)
    other = simulate_genotypes(hierarchy, dataclasses.replace(gcfg, seed=1), modules=modules)
    assert not np.array_equal(other.fitness_true[:hierarchy.num_genes], default_sim.fitness_true[:hierarchy.num_genes])
    # fewer triples: the truth and the doubles are unchanged (their own streams)
    fewer = simulate_genotypes(hierarchy, dataclasses.replace(gcfg, num_triples=100), modules=modules)
    n_single_double = default_sim.stats["singles"] + default_sim.stats["order2"]
    assert np.array_equal(fewer.fitness_true[:n_single_double], default_sim.fitness_true[:n_single_double])
    # more noise: the same genotypes and truth, other measurements
    noisy = simulate_genotypes(hierarchy, dataclasses.replace(gcfg, noise_std=0.05), modules=modules)
    assert np.array_equal(noisy.fitness_true, default_sim.fitness_true)
    assert not np.array_equal(noisy.fitness, default_sim.fitness)


def test_settings_of_the_other_simulator_are_errors():
    with pytest.raises(ValueError, match="threshold: applies to simulator 'hierarchy_aligned' only"):
        GenotypeConfig(threshold=0.3).validate()
    with pytest.raises(ValueError, match="truth_drop: applies to simulator 'modules' only"):
        GenotypeConfig(simulator="hierarchy_aligned", truth_drop=0.3).validate()
    with pytest.raises(ValueError, match="simulator: 'pairs' not in"):
        GenotypeConfig(simulator="pairs").validate()


# ---- the dataset, its summary, and the baselines -------------------------------------------------------------
def test_dataset_records_the_noise_ceiling_and_baselines_sit_below_it(demo):
    hierarchy, gcfg, _ = demo
    dataset = build_dataset(hierarchy, dataclasses.replace(gcfg, num_doubles=3000, num_triples=1000), None)
    s = dataset.meta["stats"]["simulation"]
    val = dataset.splits["val"]
    sim = simulate_genotypes(hierarchy, dataclasses.replace(gcfg, num_doubles=3000, num_triples=1000))
    assert s["noise_ceiling_pearson"] == pytest.approx(np.corrcoef(sim.fitness_true[val], sim.fitness[val])[0, 1])
    baselines = fit_baselines(dataset)
    for kind in ("additive", "multiplicative"):
        assert 0.3 < baselines[kind]["val/pearson"] < s["noise_ceiling_pearson"]
    # fitness multiplies over genes in this truth: the multiplicative baseline fits it better than the additive
    assert baselines["multiplicative"]["test/pearson"] > baselines["additive"]["test/pearson"]


def test_summary_json_reports_the_simulation(tmp_path):
    result = run_python("-m", "dcell_core.genotypes", "data.genotypes.num_doubles=2000",
                        "data.genotypes.num_triples=500", "--json", env=env_for(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    sim = summary["simulation"]
    assert sim["simulator"] == "modules"
    for key in ("truth_mismatch", "frac_abs_eps_gt_0.08", "positive_share", "noise_ceiling_pearson"):
        assert isinstance(sim[key], float) and 0.0 <= sim[key] <= 1.0, key
    assert summary["by_order"] == {"1": summary["hierarchy_genes"], "2": 2000, "3": 500}
