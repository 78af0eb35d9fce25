"""The stratum-parallel model keeps one flat parameter per kind and stratum, and stores them as the buckets'
padded blocks (`strata.{s}.buckets.{q}.{kind}`): the stored form checkpoints keep, independent of the layout."""
from __future__ import annotations

import pytest
import torch

from dcell_core.nn import ModelConfig, build_dcell, oracle_state_dict
from tests.test_nn_workspace import hierarchy

CONFIGS = [ModelConfig(), ModelConfig(subsystem_layers=2, norm_type="layer", width_basis="direct")]


def model(cfg: ModelConfig, seed: int):
    torch.manual_seed(seed)
    return build_dcell(hierarchy(), cfg).double()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_parameter_tensors_do_not_grow_with_the_buckets(cfg):
    many = build_dcell(hierarchy(), ModelConfig(**{**vars(cfg), "bucket_overhead": 0}))
    few = build_dcell(hierarchy(), ModelConfig(**{**vars(cfg), "bucket_overhead": 10 ** 9}))
    assert len(many.buckets()) > len(few.buckets())
    assert len(list(many.parameters())) == len(list(few.parameters()))
    assert sum(p.numel() for p in many.parameters()) < sum(p.numel() for p in few.parameters())  # more padding


@pytest.mark.parametrize("cfg", CONFIGS)
def test_the_state_dict_stores_every_bucket_block_under_its_name(cfg):
    m = model(cfg, 0)
    sd = m.state_dict()
    stored = {f"strata.{s}.buckets.{q}.{name}": shape for s, st in enumerate(m.strata)
              for q, b in enumerate(st.buckets) for name, shape in b.shapes().items()}
    assert {k: tuple(v.shape) for k, v in sd.items() if ".buckets." in k} == stored
    rest = {k.split(".", 2)[2] for k in sd if k.startswith("strata.") and k not in stored}
    assert rest and all(k == "gene_weight" or k.startswith("running_") for k in rest), rest  # no flat parameter
    # no two stored tensors share memory (safetensors refuses that)
    assert len({v.untyped_storage().data_ptr() for v in sd.values()}) == len(sd)

    # a stored block changes exactly its bucket's terms: shift bucket 0's head biases and first-layer biases
    s, q = 0, 0
    terms = set(m.plan.strata[s][q].terms)
    assert 0 < len(terms) < m.sizes.num_terms
    sd[f"strata.{s}.buckets.{q}.head_bias"] += 1.0
    sd[f"strata.{s}.buckets.{q}.biases.0"] -= 2.0
    other = model(cfg, 1)
    other.load_state_dict(sd, strict=True)
    before, after = oracle_state_dict(m), oracle_state_dict(other)
    for t in range(m.sizes.num_terms):
        head, bias = f"terms.{t}.head.bias", f"terms.{t}.linears.0.bias"
        assert torch.equal(after[head], before[head] + (1.0 if t in terms else 0.0)), head
        assert torch.equal(after[bias], before[bias] - (2.0 if t in terms else 0.0)), bias
    assert all(torch.equal(after[k], before[k]) for k in before if ".head.bias" not in k and ".linears.0.bias" not in k)


def test_a_missing_or_misshapen_block_is_named():
    m = model(ModelConfig(), 0)
    sd = m.state_dict()
    del sd["strata.0.buckets.0.head_bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*\"strata\.0\.buckets\.0\.head_bias\""):
        model(ModelConfig(), 1).load_state_dict(sd, strict=True)
    sd = m.state_dict()
    shape = tuple(sd["strata.0.buckets.0.head_weight"].shape)
    sd["strata.0.buckets.0.head_weight"] = torch.zeros(shape[0], 1, shape[2] + 1)
    with pytest.raises(RuntimeError, match=r"size mismatch for strata\.0\.buckets\.0\.head_weight: copying a param "
                                           rf"with shape \({shape[0]}, 1, {shape[2] + 1}\)"):
        model(ModelConfig(), 1).load_state_dict(sd, strict=True)
