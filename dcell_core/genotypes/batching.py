"""Dense disruption batches from CSR genotypes: x[b, g] = 1 when genotype b disrupts gene g (paper coding).

A batch is made by one scatter into a zeroed [B, n_genes] float32 tensor; no Python loop over samples.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .csr import GenotypeDataError, validate_csr


class GenotypeBatcher:
    """Turns sample indices into (x [B, n_genes] float32, y [B] or [B, k] float32) tensors."""

    def __init__(self, gene_indices: np.ndarray, offsets: np.ndarray, phenotypes: np.ndarray, num_genes: int) -> None:
        validate_csr(gene_indices, offsets, num_genes)
        n_rows = len(offsets) - 1
        if len(phenotypes) != n_rows:
            raise GenotypeDataError(f"{len(phenotypes)} phenotype rows for {n_rows} genotypes")
        self.num_genes = int(num_genes)
        self.num_rows = n_rows
        # built once: the hot path only indexes into these
        self._genes = torch.from_numpy(np.ascontiguousarray(gene_indices, dtype=np.int64))  # [nnz]
        self._offsets = torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.int64))  # [N + 1]
        self._y = torch.from_numpy(np.ascontiguousarray(phenotypes, dtype=np.float32))  # [N] or [N, k]

    @classmethod
    def from_dataset(cls, dataset) -> "GenotypeBatcher":
        """Batcher over a GenotypeDataset's CSR arrays and phenotypes."""
        return cls(dataset.gene_indices, dataset.offsets, dataset.phenotypes, dataset.num_genes)

    def rows_tensor(self, rows) -> torch.Tensor:
        """int64 tensor [B] of sample indices, checked to lie in [0, N)."""
        rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        if rows_t.ndim != 1:
            raise GenotypeDataError(f"sample indices must be 1-D, got shape {tuple(rows_t.shape)}")
        bad = (rows_t < 0) | (rows_t >= self.num_rows)
        if bool(bad.any()):
            pos = int(bad.nonzero()[0, 0])
            raise GenotypeDataError(f"sample index {int(rows_t[pos])} at batch position {pos} is outside "
                                    f"[0, {self.num_rows})")
        return rows_t

    def matrix(self, rows, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense 0/1 float32 [B, n_genes]; `out` (same shape) is reused and overwritten when given."""
        rows_t = self.rows_tensor(rows)
        starts = self._offsets[rows_t]  # [B]
        lengths = self._offsets[rows_t + 1] - starts  # [B]
        n_entries = int(lengths.sum())
        batch_row = torch.repeat_interleave(torch.arange(len(rows_t)), lengths)  # [nnz_b]
        # entry of the j-th gene of batch row b = starts[b] + j = global position - (first position of b) + start
        shift = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)  # [nnz_b]
        cols = self._genes[shift + torch.arange(n_entries)]  # [nnz_b]
        if out is None:
            out = torch.zeros(len(rows_t), self.num_genes, dtype=torch.float32)
        else:
            if tuple(out.shape) != (len(rows_t), self.num_genes):
                raise ValueError(f"out has shape {tuple(out.shape)}, need {(len(rows_t), self.num_genes)}")
            out.zero_()
        out.view(-1)[batch_row * self.num_genes + cols] = 1.0  # the one scatter
        return out

    def batch(self, rows, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B, n_genes] float32, y [B] or [B, k] float32) for the given sample indices."""
        rows_t = self.rows_tensor(rows)
        return self.matrix(rows_t, out), self._y[rows_t]

    def iterate(self, rows, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches over `rows` (e.g. a split); the order is a permutation seeded by (seed, epoch)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = self.rows_tensor(rows).numpy()
        if shuffle:
            rows = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        stop = len(rows) - len(rows) % batch_size if drop_last else len(rows)
        for start in range(0, stop, batch_size):  # loop over batches, not samples
            yield self.batch(rows[start:start + batch_size])


def genotype_matrix(gene_indices: np.ndarray, offsets: np.ndarray, rows, num_genes: int) -> torch.Tensor:
    """One-off dense 0/1 float32 [B, n_genes] for `rows` of CSR genotypes (validates the arrays each call;
    build a GenotypeBatcher once for repeated batches)."""
    n_rows = len(offsets) - 1
    return GenotypeBatcher(gene_indices, offsets, np.zeros(n_rows, np.float32), num_genes).matrix(rows)
