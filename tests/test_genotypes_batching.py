"""Dense disruption batches: hand-computed matrices, validation, seeded epoch iteration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcell_core.genotypes import GenotypeBatcher, GenotypeDataError, csr_from_lists, genotype_matrix

ROWS = [[0, 2], [1], [3, 4, 5], [2]]
PHENO = np.array([0.5, 0.25, 0.125, 1.0], dtype=np.float32)


@pytest.fixture()
def batcher() -> GenotypeBatcher:
    flat, offsets = csr_from_lists(ROWS)
    return GenotypeBatcher(flat, offsets, PHENO, num_genes=7)


def test_matrix_equals_hand_written_matrix(batcher):
    x, y = batcher.batch([2, 0, 0, 3])
    expected = torch.tensor([
        [0, 0, 0, 1, 1, 1, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
    ], dtype=torch.float32)
    assert x.dtype == torch.float32 and torch.equal(x, expected)
    assert torch.equal(y, torch.tensor([0.125, 0.5, 0.5, 1.0]))


def test_out_buffer_is_cleared_before_reuse(batcher):
    out = torch.full((2, 7), 9.0)
    x = batcher.matrix(np.array([1, 3]), out=out)
    assert x.data_ptr() == out.data_ptr()
    assert torch.equal(x, torch.tensor([[0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]], dtype=torch.float32))
    with pytest.raises(ValueError, match="out has shape"):
        batcher.matrix([0], out=out)


def test_construction_validates_gene_indices_naming_the_row():
    flat, offsets = csr_from_lists([[0], [1, 9], [2]])
    with pytest.raises(GenotypeDataError, match="row 1 has gene index 9 outside \\[0, 7\\)"):
        GenotypeBatcher(flat, offsets, np.zeros(3, np.float32), num_genes=7)
    flat, offsets = csr_from_lists([[0], [1]])
    with pytest.raises(GenotypeDataError, match="3 phenotype rows for 2 genotypes"):
        GenotypeBatcher(flat, offsets, np.zeros(3, np.float32), num_genes=7)


def test_sample_index_out_of_range_names_position_and_value(batcher):
    with pytest.raises(GenotypeDataError, match="sample index 4 at batch position 1"):
        batcher.batch([0, 4])
    with pytest.raises(GenotypeDataError, match="sample index -1 at batch position 0"):
        batcher.matrix([-1])


def _loop_oracle(rows: list[list[int]], picks, num_genes: int) -> torch.Tensor:
    """Independent per-sample construction (the slow way) to compare against the scatter."""
    out = torch.zeros(len(picks), num_genes)
    for b, r in enumerate(picks):
        for g in rows[r]:
            out[b, g] = 1.0
    return out


def test_scatter_matches_loop_on_random_genotypes():
    rng = np.random.default_rng(0)
    rows = [sorted(rng.choice(50, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(300)]
    flat, offsets = csr_from_lists(rows)
    picks = rng.integers(0, 300, size=64)
    assert torch.equal(genotype_matrix(flat, offsets, picks, 50), _loop_oracle(rows, picks, 50))


def test_iterate_covers_split_once_per_epoch_and_is_seeded(batcher):
    split = np.array([0, 1, 3])

    def order(seed, epoch, **kw):
        ys = [y for _, y in batcher.iterate(split, batch_size=2, seed=seed, epoch=epoch, **kw)]
        return torch.cat(ys).tolist() if ys else []

    assert sorted(order(0, 0)) == sorted(PHENO[split].tolist())
    assert order(0, 0) == order(0, 0)
    epochs = {tuple(order(0, e)) for e in range(8)}
    assert len(epochs) > 1  # 3! = 6 orders; eight epochs almost surely see two
    assert order(0, 0, shuffle=False) == PHENO[split].tolist()
    assert len(order(0, 0, drop_last=True)) == 2
    for x, y in batcher.iterate(split, batch_size=2, seed=3, epoch=1):
        for row_x, row_y in zip(x, y):
            source = int(np.flatnonzero(PHENO == row_y.item())[0])  # phenotypes are distinct per row
            assert torch.equal(row_x, _loop_oracle(ROWS, [source], 7)[0])
