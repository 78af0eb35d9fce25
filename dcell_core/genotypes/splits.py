"""Seeded train / val / test splits in which all rows with the same gene set share one split.

Screens measure some genotypes more than once (SGA: query A x array B and query B x array A, several alleles
of a gene); putting copies on both sides of a split would leak test genotypes into training.
"""
from __future__ import annotations

import numpy as np

from .csr import GenotypeDataError, row_of_entries

SPLIT_NAMES = ("train", "val", "test")


def row_keys(padded: np.ndarray, base: int) -> np.ndarray | None:
    """One int64 per row of `padded` (int [N, L], entries in [-1, base - 1], -1 = no gene), equal exactly for
    equal rows and ordered like the rows' lexicographic order; None when base**L does not fit in int64."""
    if float(base) ** padded.shape[1] >= 2.0 ** 62:
        return None
    key = np.zeros(len(padded), dtype=np.int64)
    for column in range(padded.shape[1]):  # most significant digit first: the lexicographic order
        key = key * base + (padded[:, column].astype(np.int64) + 1)
    return key


def genotype_groups(gene_indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Group id per row, int64 [N]: rows with equal (sorted) gene sets get the same id, numbered in the
    lexicographic order of the gene sets."""
    n_rows = len(offsets) - 1
    if n_rows == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.diff(offsets)
    padded = np.full((n_rows, int(lengths.max())), -1, dtype=np.int64)  # [N, L], -1 = no gene
    rank = np.arange(len(gene_indices)) - np.repeat(offsets[:-1], lengths)
    padded[row_of_entries(offsets), rank] = gene_indices
    key = row_keys(padded, int(gene_indices.max()) + 2)
    if key is None:  # very long genotypes: compare whole rows
        return np.unique(padded, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    ids = np.empty(n_rows, dtype=np.int64)
    ids[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    return ids


def split_rows(gene_indices: np.ndarray, offsets: np.ndarray, val_fraction: float, test_fraction: float,
               seed: int) -> dict[str, np.ndarray]:
    """Sorted int64 row indices per split; genotype groups are shuffled by `seed` and dealt out in order.

    The test split takes groups until it holds round(N * test_fraction) rows (the last group may overshoot),
    then val likewise; the rest is train. Deterministic for equal inputs and seed.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}")
    n_rows = len(offsets) - 1
    groups = genotype_groups(gene_indices, offsets)
    n_groups = int(groups.max()) + 1 if n_rows else 0
    order = np.random.default_rng(seed).permutation(n_groups)  # shuffled group sequence
    sizes = np.bincount(groups, minlength=n_groups)[order]
    start = np.cumsum(sizes) - sizes  # rows dealt before each group in shuffled order
    n_test, n_val = round(n_rows * test_fraction), round(n_rows * val_fraction)
    in_test = start < n_test
    test_end = int(sizes[in_test].sum())
    in_val = ~in_test & (start < test_end + n_val)
    label_of_group = np.empty(n_groups, dtype=np.int64)
    label_of_group[order] = np.where(in_test, 2, np.where(in_val, 1, 0))  # 0 train, 1 val, 2 test
    label = label_of_group[groups]
    return {name: np.flatnonzero(label == i).astype(np.int64) for i, name in enumerate(SPLIT_NAMES)}


def validate_splits(splits: dict[str, np.ndarray], n_rows: int) -> None:
    """Splits must be exactly train/val/test, in range, disjoint and cover all rows."""
    if set(splits) != set(SPLIT_NAMES):
        raise GenotypeDataError(f"splits must be {SPLIT_NAMES}, got {sorted(splits)}")
    seen = np.zeros(n_rows, dtype=np.int64)
    for name in SPLIT_NAMES:
        rows = np.asarray(splits[name])
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            bad = rows[(rows < 0) | (rows >= n_rows)][0]
            raise GenotypeDataError(f"split {name!r} holds row {bad} outside [0, {n_rows})")
        np.add.at(seen, rows, 1)
    if (seen != 1).any():
        row = int(np.argmax(seen != 1))
        raise GenotypeDataError(f"row {row} appears in {seen[row]} splits; splits must be disjoint and cover "
                                f"all {n_rows} rows")
