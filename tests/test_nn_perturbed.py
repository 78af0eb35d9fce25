"""Strata above 0 in perturbation form (dcell_core/nn/perturbed.py) equal the per-term oracle in float64.

A stratum takes the form batch by batch (its perturbed reads at most `max_read_ratio` of the dense reads, saving
at least `min_saved_reads`, cheaper by the `read_cost` model, every stratum below in the form too). These tests
force the form on every eligible stratum (ratio infinite, no cost model), on some (a looser rule on a real
sub-hierarchy) or on none, and compare outputs, loss, every gradient, the batch-norm running statistics and eval
outputs with the oracle (`assert_equivalent`).
"""
from __future__ import annotations

import pytest
import torch

from dcell_core.nn import LossConfig, ModelConfig, build_dcell, dcell_loss
from dcell_core.nn.perturbed import PerturbationLayout
from test_nn_equivalence import COMPACT_CASES, assert_equivalent, hand_hierarchy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def formed(monkeypatch):
    """The strata above 0 laid out in perturbation form, per forward call (a list per call; stratum 0 takes the
    layout too where PairTanhNorm computes it)."""
    calls: list[list[int]] = []
    real = PerturbationLayout.stratum

    def recording(self, s, *args, **kwargs):
        if s == 0:
            return real(self, s, *args, **kwargs)
        if s == 1:
            calls.append([])
        calls[-1].append(s)
        return real(self, s, *args, **kwargs)

    monkeypatch.setattr(PerturbationLayout, "stratum", recording)
    return calls


def allow(monkeypatch, ratio: float) -> None:
    """Let strata take the form up to this read ratio, however few reads they save (these hierarchies are small)."""
    monkeypatch.setattr(PerturbationLayout, "max_read_ratio", ratio)
    monkeypatch.setattr(PerturbationLayout, "min_saved_reads", float("-inf"))
    monkeypatch.setattr(PerturbationLayout, "read_cost", None)


def sparse_genotypes(num_genes: int, batch: int, per_sample: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, num_genes, dtype=torch.float64)
    x[torch.arange(batch).repeat_interleave(per_sample), torch.randint(0, num_genes, (batch * per_sample,),
                                                                       generator=g)] = 1.0
    return x


@pytest.mark.parametrize("case", sorted(COMPACT_CASES))
@pytest.mark.parametrize("values", ["binary", "weighted"])
@pytest.mark.parametrize("states", [True, False])
def test_every_stratum_in_perturbation_form_equals_oracle(case, values, states, formed, monkeypatch):
    allow(monkeypatch, float("inf"))
    h = hand_hierarchy()
    x = sparse_genotypes(h.num_genes, 7, 2, seed=3)
    x[0] = 0.0  # a wild-type sample: no term is perturbed in it
    if values == "weighted":
        x = x * torch.linspace(0.25, 2.0, h.num_genes, dtype=torch.float64)
    assert_equivalent(h, COMPACT_CASES[case], batch=7, x=x, genotype_grad=False, states=states)
    # every forward (the oracle's comparison, train and eval) laid out strata 1..3 in the form
    assert formed and all(f == [1, 2, 3] for f in formed)


def test_duplicate_genes_and_an_unperturbed_bucket(formed, monkeypatch):
    """Two disrupted genes of one term in one sample, and samples where only one branch is hit, so some terms
    (and whole buckets) of a formed stratum have no perturbed sample at all."""
    allow(monkeypatch, float("inf"))
    h = hand_hierarchy()
    x = torch.zeros(5, h.num_genes, dtype=torch.float64)
    gi = h.gene_index
    for b, genes in enumerate([["g1", "g2"], ["g4"], ["k3"], ["g1", "g2", "g3"], ["k2", "k3"]]):
        x[b, [gi[g] for g in genes]] = 1.0
    assert_equivalent(h, dict(width_basis="direct", min_width=3, width_ratio=2.0), batch=5, x=x,
                      genotype_grad=False, states=False)
    assert formed and all(f == [1, 2, 3] for f in formed)


@pytest.mark.parametrize("tiers", [True, False])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_the_rule_forms_a_prefix_of_the_strata(formed, monkeypatch, ratio, tiers):
    """Sparse genotypes on a real hierarchy (yeast_dna_repair: 288 genes, so a disrupted gene perturbs far more of it
    than of the whole genome, and the default ratio forms nothing here): the lowest strata take the form (a prefix
    from stratum 1), the top ones stay dense, and the mix equals the oracle."""
    from dcell_core.ontology import load_named

    allow(monkeypatch, ratio)
    monkeypatch.setattr(PerturbationLayout, "tiers", tiers)
    h = load_named("yeast_dna_repair")
    x = sparse_genotypes(h.num_genes, 256, 1 if ratio < 0.5 else 3, seed=0)
    assert_equivalent(h, dict(width_basis="direct"), batch=256, x=x, genotype_grad=False, states=False)
    assert formed, "no stratum took the form"
    assert all(f == list(range(1, len(f) + 1)) for f in formed)  # a prefix from stratum 1
    assert max(len(f) for f in formed) < h.num_strata - 1  # the top strata stay dense


def test_no_form_when_most_samples_perturb_most_terms(formed, monkeypatch):
    allow(monkeypatch, 0.5)
    h = hand_hierarchy()
    x = (torch.rand(6, h.num_genes, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    assert_equivalent(h, {}, batch=6, x=x, genotype_grad=False)
    assert formed == []


def test_no_form_when_a_stratum_saves_too_few_reads(formed, monkeypatch):
    """However sparse the batch, a stratum saving fewer than `min_saved_reads` read elements stays dense."""
    monkeypatch.setattr(PerturbationLayout, "max_read_ratio", float("inf"))
    monkeypatch.setattr(PerturbationLayout, "read_cost", None)
    h = hand_hierarchy()
    model = build_dcell(h, ModelConfig()).double()
    model(sparse_genotypes(h.num_genes, 7, 1, seed=0))
    assert formed == []
    monkeypatch.setattr(PerturbationLayout, "min_saved_reads", float("-inf"))
    model(sparse_genotypes(h.num_genes, 7, 1, seed=0))
    assert formed == [[1, 2, 3]]


@pytest.mark.parametrize("kw", [dict(norm_type="layer"), dict(subsystem_layers=2), dict(learnable_embedding_dim=4),
                                dict(sparse_gene_inputs=False), dict(num_attention_heads=1, norm_type="layer")])
def test_settings_outside_the_form_take_the_general_path(kw):
    """docs/performance.md names these: the form needs binary genes on the sparse path, one layer, batch norm or
    none."""
    assert build_dcell(hand_hierarchy(), ModelConfig(**kw)).perturbation is None


def test_genotypes_needing_a_gradient_take_the_general_path(formed, monkeypatch):
    allow(monkeypatch, float("inf"))
    h = hand_hierarchy()
    model = build_dcell(h, ModelConfig()).double()
    x = sparse_genotypes(h.num_genes, 4, 2, seed=0).requires_grad_(True)
    total, _ = dcell_loss(model(x), torch.zeros(4, dtype=torch.float64), LossConfig())
    total.backward()
    assert formed == [] and x.grad is not None


def test_bf16_autocast_in_perturbation_form(formed, monkeypatch):
    """Under bfloat16 autocast the formed strata compute their matmuls in bfloat16 and hand float32 gradients back;
    the prediction stays within bfloat16 rounding of the float32 one."""
    allow(monkeypatch, float("inf"))
    h = hand_hierarchy()
    torch.manual_seed(0)
    model = build_dcell(h, ModelConfig())
    x = sparse_genotypes(h.num_genes, 8, 2, seed=0).float()
    reference = model(x).prediction.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        total, _ = dcell_loss(out, torch.zeros(8), LossConfig())
    total.backward()
    assert formed[-1] == [1, 2, 3]
    assert out.prediction.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert float((out.prediction.detach() - reference).abs().max()) < 0.05 * max(1.0, float(reference.abs().max()))


def test_tiers_pad_each_term_less_than_its_bucket(monkeypatch):
    """On a real hierarchy at batch 256 the terms of a bucket have from 0 to many perturbed samples: the tiers
    (terms by the bit length of that count) split buckets, and every term's block is padded to its tier's most,
    under twice its own count, where one tier per bucket pads every term to the bucket's most."""
    from dcell_core.ontology import load_named

    h = load_named("yeast_dna_repair")
    model = build_dcell(h, ModelConfig(width_basis="direct")).double()
    x = sparse_genotypes(h.num_genes, 256, 1, seed=0)
    layout, B = model.perturbation, 256
    pairs = layout.counts(*x.nonzero(as_tuple=True), B)
    monkeypatch.setattr(PerturbationLayout, "tiers", False)
    flat = layout.counts(*x.nonzero(as_tuple=True), B)
    split = False
    for s in range(1, len(model.strata)):
        dense, reads, dense_macs, macs = layout._reads(s, pairs, B)
        flat_dense, flat_reads, flat_dense_macs, flat_macs = layout._reads(s, flat, B)
        assert (dense, dense_macs) == (flat_dense, flat_dense_macs) and reads <= flat_reads and macs <= flat_macs
        u0, u1 = layout.ustart[s], layout.ustart[s + 1]
        n, m = pairs.tier_n, pairs.tier_m
        b0, b1 = layout.bstart[s], layout.bstart[s + 1]
        split |= bool(((n[b0:b1] > 0).sum(1) > 1).any())
        cnt = pairs.cnt[u0:u1]
        tier_most = torch.from_numpy(m.reshape(-1)).index_select(0, pairs.key[u0:u1])
        # a term with m >= 1 perturbed samples shares its tier with terms of m to 2m - 1; one with none, only
        # with such terms (their wild-type column only)
        assert bool((tier_most >= cnt).all()) and bool((tier_most <= (2 * cnt - 1).clamp(min=0)).all())
    assert split, "no bucket was split into tiers"


def test_the_pair_kernel_takes_training_with_tanh_and_batch_norm(formed, monkeypatch):
    """In training with tanh then batch norm (the paper's setting) on the CPU, stratum 0 and the formed strata run
    through PairTanhNorm (its float64 equality with the oracle: the tests above and test_nn_equivalence's compact
    cases); with the states returned, in eval or with another activation, through tensor ops."""
    from dcell_core.nn import stratum_ops

    allow(monkeypatch, float("inf"))
    calls = []
    real = stratum_ops.PairTanhNorm.forward

    def counting(ctx, *args):
        calls.append(args[7].shape[1])  # the stratum's terms
        return real(ctx, *args)

    monkeypatch.setattr(stratum_ops.PairTanhNorm, "forward", staticmethod(counting))
    h = hand_hierarchy()
    x = sparse_genotypes(h.num_genes, 7, 2, seed=3)
    for cfg, states, training, expect in [({}, False, True, 4), ({}, True, True, 0), ({}, False, False, 0),
                                          (dict(activation="gelu"), False, True, 0)]:
        torch.manual_seed(0)
        model = build_dcell(h, ModelConfig(**cfg)).double().train(training)
        calls.clear()
        out = model(x, return_states=states)
        assert len(calls) == expect, (cfg, states, training)
        if expect:
            assert calls == [len(model.strata[s].head_bias) for s in (0, 1, 2, 3)]
            total, _ = dcell_loss(out, torch.zeros(7, dtype=torch.float64), LossConfig())
            total.backward()
            assert all(p.grad is not None for p in model.strata[2].parameters())


def test_pair_kernel_rejects_inconsistent_terms():
    from dcell_core.nn.native import ops

    z = torch.zeros(8, dtype=torch.float64)
    terms = torch.tensor([[0], [2], [2], [1], [0], [4]])  # one term: rows 0-1, 1 perturbed sample, 4 columns
    args = (torch.zeros(2, dtype=torch.float64),) * 2 + (torch.zeros(2, dtype=torch.float64),
                                                         torch.zeros(1, dtype=torch.float64))
    dest = torch.zeros(2, 3, dtype=torch.float64)
    ops().pair_tanh_norm_forward(z, terms, torch.tensor([1]), torch.tensor([0, 4]), *args, 1e-5, dest)
    with pytest.raises(ValueError, match="term 0 has sample 3 outside"):
        ops().pair_tanh_norm_forward(z, terms, torch.tensor([3]), torch.tensor([0, 4]), *args, 1e-5, dest)
    with pytest.raises(ValueError, match="row 1's columns at 6 leave z"):
        ops().pair_tanh_norm_forward(z, terms, torch.tensor([1]), torch.tensor([0, 6]), *args, 1e-5, dest)
    with pytest.raises(ValueError, match="the rows' columns are 8 elements, z 9"):
        ops().pair_tanh_norm_forward(torch.zeros(9, dtype=torch.float64), terms, torch.tensor([1]),
                                     torch.tensor([0, 4]), *args, 1e-5, dest)


def test_wide_terms_take_the_form_with_more_perturbed_samples():
    """The cost rule: at the same padded read ratio a stratum of wide terms (many multiply-adds per read element)
    takes the form where one of narrow terms does not; under `min_saved_reads` neither does."""
    from dcell_core.ontology import load_named

    h = load_named("yeast_go")
    x = sparse_genotypes(h.num_genes, 256, 3, seed=0)
    formed = {}
    for basis in ("direct", "contained"):
        layout = build_dcell(h, ModelConfig(width_basis=basis)).perturbation
        pairs = layout.counts(*x.nonzero(as_tuple=True), 256)
        formed[basis] = []
        for s in range(1, len(layout.bucket_shapes)):
            dense, reads, dense_macs, macs = layout._reads(s, pairs, 256)
            takes = layout.takes_form(s, pairs, 256)
            assert takes == (dense - reads >= layout.min_saved_reads and
                             macs + layout.read_cost * reads <= dense_macs and reads <= dense)
            formed[basis].append((reads / dense, takes))
    # the contained basis forms a stratum with a higher read ratio than any the direct basis forms
    direct_most = max(r for r, takes in formed["direct"] if takes)
    assert any(takes and r > direct_most for r, takes in formed["contained"])
    assert any(not takes and r < 0.5 for r, takes in formed["direct"])


def test_pair_read_kernel_equals_the_flat_index():
    """PairRead's C++ gather and add-back (the CPU path) equal index_select and the element-order scatter over its
    flat index (the path of other devices and dtypes), bitwise, on a real layout with tiers."""
    from dcell_core.nn.common import flat_add_
    from dcell_core.ontology import load_named

    h = load_named("yeast_dna_repair")
    model = build_dcell(h, ModelConfig(width_basis="direct"))
    B = 64
    x = sparse_genotypes(h.num_genes, B, 2, seed=1).float()
    layout = model.perturbation
    pairs = layout.counts(*x.nonzero(as_tuple=True), B)
    rows = model.buffer_rows(B)
    wild = torch.tensor([(model.plan.num_rows + r) * B for r in model._wild_rows(B)[:-1]] + [0])
    buf = torch.randn(rows, B, generator=torch.Generator().manual_seed(0))
    read = layout.stratum(1, pairs, B, None, wild).read
    assert len(read.n) > len(layout.bucket_shapes[1]) // 2 and len(set(read.cols)) > 1  # several tiers
    index = read.index(B)
    got = read.gather(buf)
    assert torch.equal(got, buf.view(-1).index_select(0, index))
    grad = torch.randn(len(index), generator=torch.Generator().manual_seed(1))
    a, b = buf.clone(), buf.clone()
    read.add_back_(a, grad)
    flat_add_(b.view(-1), index, grad)
    assert torch.equal(a, b) and not torch.equal(a, buf)
    with pytest.raises(ValueError, match="leaves the buffer"):
        read.gather(buf[: rows // 2])
