"""Per-gene baselines a DCell model must beat, fitted on a dataset's own train split.

* additive: ridge regression of the phenotype on the 0/1 disruption matrix X [N, G] (an intercept plus one
  effect per gene; y ≈ b + sum of the disrupted genes' effects);
* multiplicative: the same ridge on log(phenotype) (fitness multiplies over genes: F(ab) = F(a) F(b)), predicted
  as exp(.); phenotypes are clipped at `LOG_FLOOR` before the log (measured fitness can be <= 0 from noise).

The ridge penalty is chosen from `PENALTIES` by validation Pearson (the validation split is for selection, the
test split reports). Closed form on the normal equations (X'X is G x G and sparse-built), so whole yeast
(about 6,000 genes) fits in seconds.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from dcell_core.genotypes.csr import ragged_positions
from dcell_core.train.metrics import regression_metrics

PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0)
LOG_FLOOR = 1e-2
KINDS = ("additive", "multiplicative")


def disruption_matrix(gene_indices: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                      num_genes: int) -> sparse.csr_matrix:
    """0/1 matrix [len(rows), num_genes] of the CSR genotypes `rows`."""
    lengths = np.diff(offsets)[rows]
    cols = gene_indices[ragged_positions(offsets[rows], lengths)]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sparse.csr_matrix((np.ones(len(cols)), cols, indptr), shape=(len(rows), num_genes))


def _ridge(x: sparse.csr_matrix, y: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
    """Intercept and coefficients of ridge regression (intercept not penalized)."""
    mean_x = np.asarray(x.mean(axis=0)).ravel()
    mean_y = float(y.mean())
    gram = (x.T @ x).toarray() - len(y) * np.outer(mean_x, mean_x)  # centred X'X
    rhs = x.T @ (y - mean_y)
    coef = linalg.solve(gram + penalty * np.eye(len(mean_x)), rhs, assume_a="pos")
    return mean_y - float(mean_x @ coef), coef


def fit_baselines(dataset, column: int = 0) -> dict[str, dict[str, float]]:
    """{kind: {"penalty", "val/pearson", "val/mse", "test/pearson", "test/mse", ...}} for both baselines on a
    GenotypeDataset (phenotype column `column`), fitted on its train split."""
    y_all = dataset.phenotypes.astype(np.float64).reshape(len(dataset), -1)[:, column]
    xs = {name: disruption_matrix(dataset.gene_indices, dataset.offsets, rows, dataset.num_genes)
          for name, rows in dataset.splits.items()}
    ys = {name: y_all[rows] for name, rows in dataset.splits.items()}
    if len(ys["train"]) == 0 or len(ys["val"]) < 2:
        raise ValueError(f"baselines need a train split and >= 2 validation rows, got split sizes "
                         f"{ {n: len(r) for n, r in dataset.splits.items()} }")
    out = {}
    for kind in KINDS:
        target = ys["train"] if kind == "additive" else np.log(np.maximum(ys["train"], LOG_FLOOR))
        best = None
        for penalty in PENALTIES:
            b, coef = _ridge(xs["train"], target, penalty)
            pred = {name: b + x @ coef for name, x in xs.items()}
            if kind == "multiplicative":
                pred = {name: np.exp(p) for name, p in pred.items()}
            val = regression_metrics(pred["val"], ys["val"])
            score = val["pearson"] if np.isfinite(val["pearson"]) else -np.inf
            if best is None or score > best[0]:
                best = (score, penalty, pred)
        _, penalty, pred = best
        result = {"penalty": penalty}
        for name in ("train", "val", "test"):
            if len(ys[name]) >= 2:
                m = regression_metrics(pred[name], ys[name])
                result.update({f"{name}/pearson": m["pearson"], f"{name}/mse": m["mse"]})
        out[kind] = result
    return out
