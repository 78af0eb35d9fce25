"""Per-gene baselines (dcell_core/train/baselines.py) on small hand-made GenotypeDatasets: each baseline recovers
the phenotype it models, the disruption matrix is the dense 0/1 matrix, and data without validation rows is refused;
a search's record of them (dcell_core/search/baselines.py) on a real sqlite MLflow store."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlflow.tracking import MlflowClient

from dcell_core.genotypes import GenotypeDataset, csr_from_lists
from dcell_core.search import baselines as recorded
from dcell_core.search import ledger
from dcell_core.train.baselines import KINDS, PENALTIES, disruption_matrix, fit_baselines

NUM_GENES = 8
GENOTYPES = [list(c) for k in (1, 2, 3) for c in itertools.combinations(range(NUM_GENES), k)]  # 8 + 28 + 56 rows


def dataset(phenotype, genotypes=GENOTYPES, fractions=(0.6, 0.2), seed=0) -> GenotypeDataset:
    """Rows `genotypes` with phenotype(genes) each, split at random into train / val / test by `fractions`."""
    flat, offsets = csr_from_lists(genotypes)
    order = np.random.default_rng(seed).permutation(len(genotypes))
    cut = np.cumsum([round(f * len(genotypes)) for f in fractions])
    splits = {name: np.sort(part).astype(np.int64)
              for name, part in zip(("train", "val", "test"), np.split(order, cut))}
    y = np.array([phenotype(g) for g in genotypes], np.float32)
    return GenotypeDataset(flat, offsets, y, NUM_GENES, ("fitness",), splits)


EFFECTS = np.random.default_rng(1).uniform(0.3, 1.0, NUM_GENES)  # fitness of each single mutant


def test_multiplicative_fitness_is_fitted_by_the_multiplicative_baseline():
    fitted = fit_baselines(dataset(lambda genes: float(np.prod(EFFECTS[genes]))))
    assert set(fitted) == set(KINDS)
    mult, add = fitted["multiplicative"], fitted["additive"]
    assert mult["test/pearson"] == pytest.approx(1.0, abs=1e-4)
    assert mult["test/pearson"] > add["test/pearson"] + 0.01 and mult["test/mse"] < add["test/mse"]
    assert mult["val/pearson"] > add["val/pearson"]
    assert {mult["penalty"], add["penalty"]} <= set(PENALTIES)
    assert set(mult) == {"penalty", *(f"{s}/{m}" for s in ("train", "val", "test") for m in ("pearson", "mse"))}


def test_additive_phenotype_is_fitted_by_the_additive_baseline():
    fitted = fit_baselines(dataset(lambda genes: 2.0 + float(np.sum(EFFECTS[genes] - 0.6))))
    add = fitted["additive"]
    assert add["test/pearson"] == pytest.approx(1.0, abs=1e-4) and add["test/mse"] < 1e-3
    assert add["penalty"] in PENALTIES
    assert add["test/pearson"] > fitted["multiplicative"]["test/pearson"]


def test_a_second_phenotype_column_is_fitted_when_named():
    ds = dataset(lambda genes: 0.0)
    y = np.stack([np.zeros(len(GENOTYPES)), [2.0 + float(np.sum(EFFECTS[g])) for g in GENOTYPES]], axis=1)
    two = GenotypeDataset(ds.gene_indices, ds.offsets, y.astype(np.float32), NUM_GENES, ("a", "b"), ds.splits)
    assert fit_baselines(two, column=1)["additive"]["test/pearson"] == pytest.approx(1.0, abs=1e-4)


def test_disruption_matrix_is_the_dense_matrix():
    genotypes = [[0, 3], [5], [1, 2, 7], [4], [0, 6, 7]]
    flat, offsets = csr_from_lists(genotypes)
    rows = np.array([4, 0, 2])  # a subset, out of order
    dense = np.zeros((len(rows), NUM_GENES))
    for i, row in enumerate(rows):
        dense[i, genotypes[row]] = 1.0
    got = disruption_matrix(flat, offsets, rows, NUM_GENES)
    assert got.shape == (3, NUM_GENES) and np.array_equal(got.toarray(), dense)
    assert disruption_matrix(flat, offsets, np.zeros(0, np.int64), NUM_GENES).shape == (0, NUM_GENES)


@pytest.mark.parametrize("fractions", [(0.8, 0.0), (0.9, 0.011)])  # no validation row; one validation row
def test_too_few_validation_rows_are_refused_with_the_split_sizes(fractions):
    ds = dataset(lambda genes: 1.0 + len(genes), fractions=fractions)
    sizes = {name: len(rows) for name, rows in ds.splits.items()}
    assert sizes["val"] < 2
    with pytest.raises(ValueError, match=f"split sizes .*'train': {sizes['train']}, 'val': {sizes['val']}, "
                                         f"'test': {sizes['test']}"):
        fit_baselines(ds)


def test_a_search_logs_reads_back_and_describes_its_baselines(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    parent = ledger.open_parent(client, exp, "s-1", {}, {"metric": "val/pearson", "mode": "max"})
    assert recorded.read(client.get_run(parent)) == {}  # e.g. a search recorded before baselines existed
    ds = dataset(lambda genes: float(np.prod(EFFECTS[genes])))
    values = recorded.fit_and_log(client, parent, ds)
    fitted = fit_baselines(ds)
    assert values == {kind: {m: fitted[kind][m] for m in recorded.SPLITS_METRICS} for kind in KINDS}
    metrics = client.get_run(parent).data.metrics
    assert metrics["baseline/multiplicative/test/pearson"] == fitted["multiplicative"]["test/pearson"]
    assert recorded.read(client.get_run(parent)) == values
    line = "additive {:.4f} (test {:.4f}), multiplicative {:.4f} (test {:.4f})"
    pearson = line.format(*(v[m] for v in values.values() for m in ("val/pearson", "test/pearson")))
    head = "per-gene baselines (ridge on the train split), "
    assert recorded.describe(values, "val/pearson") == f"{head}val/pearson: {pearson}"
    assert recorded.describe(values, "val/spearman") == f"{head}val/pearson: {pearson}"  # no baseline counterpart
    mse = line.format(*(v[m] for v in values.values() for m in ("val/mse", "test/mse")))
    assert recorded.describe(values, "val/mse") == f"{head}val/mse: {mse}"
