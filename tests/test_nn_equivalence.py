r"""The stratum-parallel DCell equals the per-term oracle (outputs, loss, gradients, norm statistics), in float64.

Hand-made hierarchy (11 terms, 4 strata; stratum in brackets):

    R [3] (g8)
    |-- A [2] (g1, g7) -- D [0] (g1 g2 g3)         A: children + genes; g1 is also directly on D
    |                  \-- E [1] (g6) -- G [0] (g4 g5)   E: children + genes; G, D, F, J: genes only
    |-- B [2] ---------- E, F [0] (h00..h69)       B, C, H: children only; F holds 70 genes, so under the
    |-- C [1] ---------- F                         paper's rule F, B, C and R are wider than 20
    \-- H [2] ---------- I [1] (k1) -- J [0] (k2 k3)
"""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dcell_core.nn import (LossConfig, ModelConfig, build_dcell, dcell_loss, from_oracle, oracle_gradients,
                           oracle_state_dict)
from dcell_core.nn.convert import load_oracle_state_dict
from dcell_core.ontology.hierarchy import Hierarchy



pytestmark = pytest.mark.usefixtures("one_thread")


def hand_hierarchy(gene_name=lambda g: g) -> Hierarchy:
    children = {"R": ["A", "B", "C", "H"], "A": ["D", "E"], "B": ["E", "F"], "C": ["F"], "E": ["G"],
                "H": ["I"], "I": ["J"]}
    genes = {"D": ["g1", "g2", "g3"], "G": ["g4", "g5"], "E": ["g6"], "F": [f"h{i:02d}" for i in range(70)],
             "A": ["g1", "g7"], "R": ["g8"], "I": ["k1"], "J": ["k2", "k3"]}
    return Hierarchy.from_mappings(children, {t: [gene_name(g) for g in gs] for t, gs in genes.items()})


def has_load_named() -> bool:
    return hasattr(importlib.import_module("dcell_core.ontology"), "load_named")


# Every knob value at least once, plus the experiments' combinations.
CASES = {
    "paper": (dict(), dict()),
    "direct": (dict(width_basis="direct"), dict()),
    "narrow_widths": (dict(min_width=3, width_ratio=2.0), dict()),
    "layer": (dict(norm_type="layer"), dict()),
    "none_relu": (dict(norm_type="none", activation="relu"), dict()),
    "norm_act_selu": (dict(norm_order="norm_act", activation="selu"), dict()),
    "batch_gelu_0.1": (dict(activation="gelu", init_range=0.1), dict()),
    "leaky_init_0.001": (dict(activation="leaky_relu", init_range=0.001), dict()),
    "layers3_layer_norm_act": (dict(subsystem_layers=3, norm_type="layer", norm_order="norm_act"), dict()),
    "layers2_batch": (dict(subsystem_layers=2, min_width=3, width_ratio=2.0), dict()),
    "embedding8": (dict(learnable_embedding_dim=8), dict()),
    "embedding8_attention1": (dict(learnable_embedding_dim=8, num_attention_heads=1), dict()),
    "attention2_binary": (dict(num_attention_heads=2, attention_token_dim=4, norm_type="layer"), dict()),
    "alpha0": (dict(), dict(alpha=0.0)),
    "aux_mean_decay": (dict(), dict(aux_reduction="mean", weight_decay=0.01)),
    "tight_buckets": (dict(bucket_overhead=0, min_width=3, width_ratio=2.0), dict(weight_decay=0.001)),
    "dense_gene_inputs": (dict(sparse_gene_inputs=False, min_width=3, width_ratio=2.0), dict()),
}


def close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-10) -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"


def genotypes(n_genes: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n_genes, generator=g) < 0.2).double()
    y = torch.randn(batch, generator=g, dtype=torch.float64)
    return x, y


def step(model, x, y, loss_cfg, genotype_grad=True, states=True):
    x = x.clone().requires_grad_(genotype_grad)
    out = model(x, return_states=states)
    total, parts = dcell_loss(out, y, loss_cfg, model.decay_weights())
    total.backward()
    return out, parts, x.grad


def assert_equivalent(hierarchy: Hierarchy, model_kw: dict, loss_kw: dict | None = None, batch: int = 6,
                      x: torch.Tensor | None = None, genotype_grad: bool = True, states: bool = True) -> None:
    """Same weights, same batch: outputs, loss components, every parameter gradient, the batch-norm statistics
    and the eval-mode outputs equal the oracle's, and so does the gradient wrt the genotypes when they require
    one. Without (`genotype_grad=False`, as in training) the gene input parts take the path that computes no
    input gradient and, for binary genes, the sparse path. `states=False` trains without asking for the term
    states (as training does), which keeps compact strata dense only in the activation buffer."""
    cfg, loss_cfg = ModelConfig(**model_kw), LossConfig(**(loss_kw or {}))
    torch.manual_seed(0)
    oracle = build_dcell(hierarchy, cfg, fast=False).double()
    fast = from_oracle(oracle)
    assert not fast.padding_violations()
    x_random, y = genotypes(hierarchy.num_genes, batch, seed=1)
    x = x_random if x is None else x
    out_o, parts_o, gx_o = step(oracle, x, y, loss_cfg, genotype_grad)
    out_f, parts_f, gx_f = step(fast, x, y, loss_cfg, genotype_grad, states)
    close(out_o.prediction, out_f.prediction, "root prediction")
    close(out_o.aux, out_f.aux, "auxiliary predictions")
    if states:
        close(out_o.states, out_f.states, "term states")
    for key in parts_o:
        close(parts_o[key], parts_f[key], f"loss component {key}")
    if genotype_grad:
        close(gx_o, gx_f, "gradient wrt genotypes")
    grads_f = oracle_gradients(fast)
    for name, p in oracle.named_parameters():
        assert grads_f[name] is not None, f"{name}: no gradient in the fast model"
        close(p.grad, grads_f[name], f"gradient of {name}")
    # train-mode batch norm updated the running statistics identically
    sd_f = oracle_state_dict(fast)
    for name, value in oracle.state_dict().items():
        close(value.double(), sd_f[name].double(), f"state {name}")
    # eval mode (running statistics for batch norm)
    oracle.eval(), fast.eval()
    with torch.no_grad():
        ev_o, ev_f = oracle(x, return_states=True), fast(x, return_states=True)
    close(ev_o.prediction, ev_f.prediction, "eval root prediction")
    close(ev_o.aux, ev_f.aux, "eval auxiliary predictions")
    close(ev_o.states, ev_f.states, "eval term states")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_equals_oracle_hand_hierarchy(case):
    model_kw, loss_kw = CASES[case]
    assert_equivalent(hand_hierarchy(), model_kw, loss_kw)


@pytest.mark.parametrize("case", ["paper", "direct", "layers2_batch", "layer", "tight_buckets", "embedding8",
                                  "attention2_binary", "dense_gene_inputs"])
def test_fast_equals_oracle_without_genotype_gradient(case):
    assert_equivalent(hand_hierarchy(), CASES[case][0], genotype_grad=False)


@pytest.mark.parametrize("case", ["paper", "tight_buckets"])
def test_sparse_gene_path_with_one_disrupted_gene_per_sample(case):
    """As in real screens: most genes, and whole buckets, see no disrupted gene in a batch; their gene weights
    still get a (zero) gradient, as from the oracle's dense matmul, and a repeated gene accumulates."""
    h = hand_hierarchy()
    x = torch.zeros(5, h.num_genes, dtype=torch.float64)
    g1, g4 = h.gene_index["g1"], h.gene_index["g4"]
    x[torch.arange(5), torch.tensor([g1, g1, g4, g1, h.gene_index["k3"]])] = 1.0
    assert_equivalent(h, dict(CASES[case][0], norm_type="layer"), batch=5, x=x, genotype_grad=False)


class ShapeCounter(TorchDispatchMode):
    """Counts calls of `op` whose first argument has shape `shape`."""

    def __init__(self, op, shape):
        super().__init__()
        self.count, self.op, self.shape = 0, op, tuple(shape)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is self.op and tuple(args[0].shape) == self.shape
        return func(*args, **(kwargs or {}))


COMPACT_CASES = {"paper": {}, "direct": dict(width_basis="direct"), "none_relu": CASES["none_relu"][0],
                 "norm_act": dict(norm_order="norm_act"), "selu": dict(activation="selu"),
                 "batch_gelu_0.1": CASES["batch_gelu_0.1"][0], "leaky_init_0.001": CASES["leaky_init_0.001"][0],
                 "tight_buckets": CASES["tight_buckets"][0]}


@pytest.mark.parametrize("case", sorted(COMPACT_CASES))
@pytest.mark.parametrize("values", ["binary", "weighted"])
def test_compact_first_stratum_equals_oracle(case, values):
    """Stratum 0 (no children) on the sparse path with one layer and batch norm or none is computed from its
    non-wild-type entries only: no dense activation over its [R_0, B] pre-activations runs, and everything
    (outputs, gradients, running statistics, eval outputs) equals the oracle. Random genotypes put two
    disrupted genes of one term in one sample (D holds g1 g2 g3); "weighted" uses non-binary values.
    (norm_act is tested with tanh: with a kinked activation after batch norm, a neuron that is constant over
    the batch sits exactly on the kink, where the gradient's branch is decided by rounding noise.)"""
    h = hand_hierarchy()
    model_kw = COMPACT_CASES[case]
    x, _ = genotypes(h.num_genes, 7, seed=2)
    if values == "weighted":
        x = x * torch.linspace(0.25, 2.0, h.num_genes, dtype=torch.float64)
    d = [h.gene_index[g] for g in ("g1", "g2", "g3")]
    assert bool(((x[:, d] != 0).sum(1) >= 2).any())
    assert_equivalent(h, model_kw, batch=7, x=x, genotype_grad=False)
    fast = build_dcell(h, ModelConfig(**model_kw)).double()
    act = {"relu": torch.ops.aten.relu.default, "selu": torch.ops.aten.elu.default,
           "gelu": torch.ops.aten.gelu.default, "leaky_relu": torch.ops.aten.leaky_relu.default}.get(
        fast.cfg.activation, torch.ops.aten.tanh.default)
    with ShapeCounter(act, (fast.strata[0].num_rows, 7)) as counter:
        fast(x)
    assert counter.count == 0


class RowReads(TorchDispatchMode):
    """The rows every index_select (returning a tensor or writing one) reads from a tensor of `rows` rows."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.read = rows, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.index_select.default, torch.ops.aten.index_select.out) and \
                args[0].dim() == 2 and args[0].shape[0] == self.rows:
            self.read.append(args[2].clone())
        return func(*args, **(kwargs or {}))


def test_sparse_gene_path_reads_no_gene_inputs():
    """With binary genotypes that need no gradient, no gene input row is gathered from the activation buffer: the
    strata read only their children's rows (the gene columns come from the nonzero genotype entries); the dense
    gene path reads them."""
    h = hand_hierarchy()
    x, y = genotypes(h.num_genes, 4, seed=0)
    for sparse in (True, False):
        fast = build_dcell(h, ModelConfig(sparse_gene_inputs=sparse)).double()
        with RowReads(fast.buffer_rows(len(x))) as reads:
            fast(x)
        rows = torch.cat(reads.read)
        start, stop = fast.plan.gene_rows
        gene_reads = int(((rows >= start) & (rows < stop)).sum())
        assert (rows >= stop).any()  # children rows are read either way
        assert (gene_reads == 0) if sparse else (gene_reads >= sum(map(len, fast.sizes.direct_genes))), sparse


def test_gene_inputs_get_no_scattered_gradient_when_genes_need_none():
    """Only the children inputs add their gradient into the gradient buffer; the gene inputs add none unless the
    gene region needs a gradient (learnable embeddings, or genotypes requiring grad): the buffer's gene rows stay
    zero."""
    h = hand_hierarchy()
    torch.manual_seed(0)
    for model_kw, genotype_grad in ((dict(), False), (dict(), True), (dict(learnable_embedding_dim=2), False)):
        fast = build_dcell(h, ModelConfig(**model_kw)).double()
        x, y = genotypes(h.num_genes, 4, seed=0)
        x.requires_grad_(genotype_grad)
        dcell_loss(fast(x), y, LossConfig())[0].backward()
        grad_buf = fast._grad_workspace.tensor  # the pass's gradient buffer, zeroed when the pass took it
        start, stop = fast.plan.gene_rows
        genes_need_grad = genotype_grad or model_kw.get("learnable_embedding_dim", 0) > 0
        assert grad_buf[stop:].abs().sum() > 0
        assert bool(grad_buf[start:stop].abs().sum() > 0) == genes_need_grad, (model_kw, genotype_grad)


def test_hand_hierarchy_exercises_padding_and_term_kinds():
    h = hand_hierarchy()
    kinds = {("children" if h.children[t] else "") + ("genes" if h.direct_genes[t] else "") for t in range(h.num_terms)}
    assert kinds == {"children", "genes", "childrengenes"}
    assert h.num_terms == 11 and h.num_strata == 4
    assert sum(h.gene_index["g1"] in gs for gs in h.direct_genes) == 2
    assert len(set(h.widths())) > 1
    fast = build_dcell(h, ModelConfig(min_width=3, width_ratio=2.0))
    stats = fast.plan.stats
    assert stats["padded_weights"] > stats["weights"]  # buckets pad in both dims
    assert any(b.widths.min() < b.w_max for b in fast.buckets())
    assert any(b.child_fans.min() < b.c_max or b.gene_fans.min() < b.g_max for b in fast.buckets())


REAL_CASES = ["paper", "direct", "layers3_layer_norm_act", "embedding8_attention1", "alpha0"]


@pytest.mark.skipif(not has_load_named(), reason="dcell_core.ontology.load_named not written yet")
@pytest.mark.parametrize("case", REAL_CASES)
def test_fast_equals_oracle_real_subhierarchy(case):
    from dcell_core.ontology import load_named

    h = load_named("yeast_dna_repair")
    assert h.num_strata >= 3
    model_kw, loss_kw = CASES[case]
    assert_equivalent(h, model_kw, loss_kw, batch=8)


# ---- gene order inside a term ----------------------------------------------------------------------
@pytest.mark.parametrize("model_kw", [dict(), dict(learnable_embedding_dim=4, num_attention_heads=2)])
def test_gene_order_inside_a_term_does_not_change_outputs(model_kw):
    """Renaming genes so that their sorted order reverses permutes every term's gene inputs; moving the
    weight columns (and embedding rows) along must leave every output unchanged."""
    cfg = ModelConfig(**model_kw)
    rename = {g: f"z{99 - i:02d}" for i, g in enumerate(hand_hierarchy().genes)}  # reverses the gene order
    h1, h2 = hand_hierarchy(), hand_hierarchy(lambda g: rename[g])
    assert h1.terms == h2.terms
    g1_to_g2 = torch.tensor([h2.gene_index[rename[g]] for g in h1.genes])
    permuted_terms = [t for t in range(h1.num_terms)
                      if [rename[h1.genes[g]] for g in h1.direct_genes[t]]
                      != [h2.genes[g] for g in h2.direct_genes[t]]]
    assert len(permuted_terms) >= 3

    torch.manual_seed(3)
    fast1 = build_dcell(h1, cfg).double()
    fast2 = build_dcell(h2, cfg).double()
    sd = oracle_state_dict(fast1)
    E = cfg.token_dim
    for t in range(h1.num_terms):
        w = sd[f"terms.{t}.linears.0.weight"]
        n_child = w.shape[1] - len(h1.direct_genes[t]) * E
        names1 = [h1.genes[g] for g in h1.direct_genes[t]]
        pos1 = {rename[n]: i for i, n in enumerate(names1)}
        order = [pos1[h2.genes[g]] for g in h2.direct_genes[t]]  # h2 slot j <- h1 slot order[j]
        gene_cols = w[:, n_child:].reshape(w.shape[0], len(order), E)[:, order].reshape(w.shape[0], -1)
        sd[f"terms.{t}.linears.0.weight"] = torch.cat([w[:, :n_child], gene_cols], dim=1)
    if "embedding" in sd:
        emb2 = torch.empty_like(sd["embedding"])
        emb2[g1_to_g2] = sd["embedding"]
        sd["embedding"] = emb2
    load_oracle_state_dict(fast2, sd)

    x1, _ = genotypes(h1.num_genes, 5, seed=4)
    x2 = torch.empty_like(x1)
    x2[:, g1_to_g2] = x1
    fast1.eval(), fast2.eval()
    with torch.no_grad():
        o1, o2 = fast1(x1, return_states=True), fast2(x2, return_states=True)
    close(o1.prediction, o2.prediction, "root prediction", tol=1e-12)
    close(o1.aux, o2.aux, "auxiliary predictions", tol=1e-12)
    close(o1.states, o2.states, "term states", tol=1e-12)
    assert float((o1.prediction - o1.prediction.mean()).abs().max()) > 0  # outputs depend on the genotype


# ---- op count grows with strata, not terms ---------------------------------------------------------
def replicated_hierarchy(copies: int) -> Hierarchy:
    """`copies` identical 4-stratum subtrees under one root: same strata, same shapes, copies x the terms."""
    children, genes = {"ROOT": []}, {"ROOT": ["r0"]}
    for c in range(copies):
        p = f"S{c}_"
        children["ROOT"].append(p + "top")
        children[p + "top"] = [p + "mid", p + "leafA"]
        children[p + "mid"] = [p + "leafA", p + "leafB"]
        genes[p + "leafA"] = [f"{p}a{i}" for i in range(4)]
        genes[p + "leafB"] = [f"{p}b{i}" for i in range(90)]  # much wider: its own bucket
        genes[p + "mid"] = [f"{p}m0"]
    return Hierarchy.from_mappings(children, genes)


class OpCounter(TorchDispatchMode):
    """Counts dispatched ops (only `op` when given, and only calls whose first argument has `rows` rows)."""

    def __init__(self, op=None, rows=None):
        super().__init__()
        self.count, self.op, self.rows = 0, op, rows

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += (self.op is None or func is self.op) and (self.rows is None or args[0].shape[0] == self.rows)
        return func(*args, **(kwargs or {}))


def count_step_ops(model, h: Hierarchy) -> int:
    x, y = genotypes(h.num_genes, 4, seed=0)
    with OpCounter() as counter:
        total, _ = dcell_loss(model(x), y, LossConfig())
        total.backward()
    return counter.count


def test_op_count_grows_with_strata_not_terms():
    small, big = replicated_hierarchy(2), replicated_hierarchy(4)
    assert small.num_strata == big.num_strata and big.num_terms - 1 == 2 * (small.num_terms - 1)
    cfg = ModelConfig()
    torch.manual_seed(0)
    fast_small, fast_big = build_dcell(small, cfg).double(), build_dcell(big, cfg).double()
    assert fast_small.plan.stats["buckets"] == fast_big.plan.stats["buckets"]
    assert count_step_ops(fast_small, small) == count_step_ops(fast_big, big)
    # the counter does see per-term work: the oracle's count grows with the terms
    oracle_small, oracle_big = build_dcell(small, cfg, fast=False).double(), build_dcell(big, cfg, fast=False).double()
    assert count_step_ops(oracle_big, big) > 1.5 * count_step_ops(oracle_small, small)


def test_more_strata_more_ops():
    cfg = ModelConfig()
    shallow = Hierarchy.from_mappings({"R": ["A"]}, {"A": ["a1", "a2"], "R": ["r1"]})
    deep = Hierarchy.from_mappings({"R": ["A"], "A": ["B"]}, {"B": ["a1", "a2"], "A": ["a3"], "R": ["r1"]})
    assert count_step_ops(build_dcell(deep, cfg).double(), deep) > count_step_ops(
        build_dcell(shallow, cfg).double(), shallow)


# ---- padding stays inert -----------------------------------------------------------------------------
def test_padding_stays_zero_through_adamw_steps_and_load_rejects_bad_shapes():
    h = hand_hierarchy()
    cfg = ModelConfig(min_width=3, width_ratio=2.0, norm_type="layer", subsystem_layers=2)
    torch.manual_seed(0)
    fast = build_dcell(h, cfg).double()
    opt = torch.optim.AdamW(fast.parameters(), lr=0.1, weight_decay=0.1)
    before = oracle_state_dict(fast)
    for seed in range(3):
        x, y = genotypes(h.num_genes, 6, seed)
        opt.zero_grad()
        total, _ = dcell_loss(fast(x), y, LossConfig(weight_decay=0.01), fast.decay_weights())
        total.backward()
        opt.step()
    assert fast.padding_violations() == []
    after = oracle_state_dict(fast)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the steps did train
    bad = dict(after)
    bad["terms.0.head.weight"] = torch.zeros(1, 999, dtype=torch.float64)
    with pytest.raises(ValueError, match="terms.0.head.weight"):
        load_oracle_state_dict(fast, bad)
    del bad["terms.0.head.weight"]
    with pytest.raises(KeyError, match="missing"):
        load_oracle_state_dict(fast, bad)


def test_states_layout_and_return_shapes():
    h = hand_hierarchy()
    fast = build_dcell(h, ModelConfig()).double()
    x, _ = genotypes(h.num_genes, 3, seed=0)
    out = fast(x, return_states=True)
    assert out.prediction.shape == (3,)
    assert out.aux.shape == (3, h.num_terms - 1)
    assert out.states.shape == (3, sum(h.widths()))
    assert fast(x).states is None


def test_batch_norm_training_needs_more_than_one_sample():
    h = hand_hierarchy()
    fast = build_dcell(h, ModelConfig()).double()
    with pytest.raises(ValueError, match="more than 1 value"):
        fast(torch.zeros(1, h.num_genes, dtype=torch.float64))


def test_wrong_genotype_width_is_rejected():
    h = hand_hierarchy()
    for fast in (True, False):
        with pytest.raises(ValueError, match=f"\\[B, {h.num_genes}\\]"):
            build_dcell(h, ModelConfig(), fast=fast)(torch.zeros(2, h.num_genes + 1))


def test_every_knob_value_is_covered():
    from dcell_core.nn import config as c

    covered = {(k, v) for model_kw, loss_kw in CASES.values() for k, v in {**model_kw, **loss_kw}.items()}
    defaults = {**dataclasses.asdict(ModelConfig()), **dataclasses.asdict(LossConfig())}
    covered |= set(defaults.items())
    for field, values in (("width_basis", c.WIDTH_BASES), ("norm_type", c.NORM_TYPES),
                          ("norm_order", c.NORM_ORDERS), ("activation", c.ACTIVATIONS),
                          ("aux_reduction", c.AUX_REDUCTIONS)):
        for v in values:
            assert (field, v) in covered, f"{field}={v!r} has no equivalence case"
    for field in ("init_range", "subsystem_layers", "learnable_embedding_dim", "num_attention_heads", "alpha",
                  "weight_decay", "min_width", "width_ratio", "sparse_gene_inputs"):
        assert len({v for k, v in covered if k == field}) >= 2, f"{field}: only the default is tested"
