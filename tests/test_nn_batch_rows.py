"""A forward pass never changes the model, at any batch size, and a sample's prediction does not depend on the
other samples of its batch (eval mode). Batch 1 is the case prediction services hit most; it once went through
a path that added into the bias parameter in place."""
from __future__ import annotations

import pytest
import torch

from dcell_core.nn import ModelConfig, build_dcell
from dcell_core.ontology.hierarchy import Hierarchy


def hierarchy() -> Hierarchy:
    children = {"R": ["A", "B"], "A": ["D", "E"], "B": ["E", "F"]}
    genes = {"D": ["g1", "g2", "g3"], "E": ["g4", "g5"], "F": [f"f{i}" for i in range(12)], "A": ["g6"], "R": ["g7"]}
    return Hierarchy.from_mappings(children, genes)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_rows_are_independent_and_forward_leaves_parameters(sparse, norm):
    h = hierarchy()
    torch.manual_seed(0)
    model = build_dcell(h, ModelConfig(norm_type=norm, sparse_gene_inputs=sparse, init_range=0.1))
    with torch.no_grad():
        for _ in range(2):  # train-mode steps move batch-norm statistics away from their initial values
            model(torch.bernoulli(torch.full((8, h.num_genes), 0.3)))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.bernoulli(torch.full((5, h.num_genes), 0.25))
    x[0] = 0  # the wild type
    with torch.no_grad():
        together = model(x).prediction
        alone = torch.cat([model(x[b:b + 1]).prediction for b in range(len(x))])
        again = model(x).prediction
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"forward changed {k}"
    assert torch.allclose(alone, together, rtol=1e-5, atol=1e-7)
    assert torch.equal(again, together)
    assert together.std() > 0  # different genotypes, different predictions
