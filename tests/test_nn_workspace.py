"""The stratum-parallel model reuses its activation and gradient buffers between steps (a workspace); reuse must
never change a result: overlapping graphs, threads, copies, autocast and gradients kept by the caller."""
from __future__ import annotations

import copy
import gc
import pickle
import threading

import pytest
import torch

from dcell_core.nn import (LossConfig, ModelConfig, OracleDCell, build_dcell, dcell_loss, from_oracle,
                           oracle_gradients)
from dcell_core.ontology.hierarchy import Hierarchy

pytestmark = pytest.mark.usefixtures("one_thread")


def hierarchy() -> Hierarchy:
    children = {"R": ["A", "B", "C"], "A": ["D", "E"], "B": ["E", "F"], "C": ["F"]}
    genes = {"D": ["g1", "g2", "g3"], "E": ["g4", "g5"], "F": [f"f{i}" for i in range(30)], "A": ["g6", "g1"],
             "R": ["g7"], "C": ["g8"]}
    return Hierarchy.from_mappings(children, genes)


def batch(h: Hierarchy, n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, h.num_genes, generator=g) < 0.2).to(dtype), torch.randn(n, generator=g, dtype=dtype)


def grads_of(model, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    dcell_loss(model(x), y, LossConfig())[0].backward()
    return {k: v.clone() for k, v in gradients(model).items()}


def gradients(model) -> dict[str, torch.Tensor]:
    """Every parameter gradient under the oracle's names."""
    if isinstance(model, OracleDCell):
        return {n: p.grad for n, p in model.named_parameters()}
    return oracle_gradients(model)


def models(h: Hierarchy, **kw):
    torch.manual_seed(0)
    oracle = build_dcell(h, ModelConfig(init_range=0.1, **kw), fast=False).double()
    return oracle, from_oracle(oracle)


def test_workspaces_are_reused_and_steps_stay_exact():
    h = hierarchy()
    oracle, fast = models(h)
    x, y = batch(h, 6, seed=1)
    first = grads_of(fast, x, y)
    buf, grad = fast._buf_workspace.tensor, fast._grad_workspace.tensor
    assert buf is not None and grad is not None
    buf.fill_(float("nan")), grad.fill_(float("nan"))  # leftovers of a step must not reach the next one
    second = grads_of(fast, x, y)
    assert fast._buf_workspace.tensor is buf and fast._grad_workspace.tensor is grad  # reused, not reallocated
    assert not buf[1:].isnan().all() and not grad.isnan().any()  # and really written by the second step
    for name in first:
        assert torch.equal(first[name], second[name]), name
    expected = grads_of(oracle, x, y)
    for name, value in expected.items():
        assert torch.allclose(second[name], value, rtol=1e-9, atol=1e-12), name
    # a new batch size replaces the workspace
    x8, y8 = batch(h, 8, seed=2)
    grads_of(fast, x8, y8)
    assert fast._buf_workspace.tensor.shape[1] == 8 and fast._grad_workspace.tensor.shape[1] == 8


def test_overlapping_graphs_each_get_their_own_gradients():
    """Two forward passes before either backward (the second reuses the activation buffer; backward of the first
    must not depend on it), then the backwards in the other order."""
    h = hierarchy()
    oracle, fast = models(h)
    (x1, y1), (x2, y2) = batch(h, 5, seed=3), batch(h, 5, seed=4)
    expected1, expected2 = grads_of(oracle, x1, y1), grads_of(oracle, x2, y2)
    fast.zero_grad(set_to_none=True)
    loss1 = dcell_loss(fast(x1), y1, LossConfig())[0]
    loss2 = dcell_loss(fast(x2), y2, LossConfig())[0]
    loss2.backward()
    got2 = {k: v.clone() for k, v in oracle_gradients(fast).items()}
    fast.zero_grad(set_to_none=True)
    loss1.backward()
    got1 = oracle_gradients(fast)
    for name in expected1:
        assert torch.allclose(got1[name], expected1[name], rtol=1e-9, atol=1e-12), name
        assert torch.allclose(got2[name], expected2[name], rtol=1e-9, atol=1e-12), name


def test_an_abandoned_graph_frees_the_gradient_workspace():
    h = hierarchy()
    _, fast = models(h)
    x, y = batch(h, 4, seed=5)
    grads_of(fast, x, y)
    grad_ws = fast._grad_workspace.tensor
    loss = dcell_loss(fast(x), y, LossConfig())[0]
    # backward only down to the top stratum's first layer: its read takes the workspace, the lower reads never run,
    # the workspace is never released
    torch.autograd.grad(loss, [fast.strata[-1].child_weight])
    assert fast._grad_workspace.owner() is not None  # still held by the unfinished backward
    del loss
    gc.collect()
    assert fast._grad_workspace.owner() is None
    grad_ws.fill_(float("nan"))
    grads_of(fast, x, y)
    assert fast._grad_workspace.tensor is grad_ws and not grad_ws.isnan().any()  # the next step used it


def test_gene_gradients_are_not_views_of_the_workspace():
    """Genotypes with requires_grad (and learned embeddings) get gradients the caller keeps; a later step reuses
    the gradient buffer and must leave them unchanged. Batch 1 too: there the genotype's gradient has a layout
    autograd would store as x.grad without copying."""
    h = hierarchy()
    for kw, n in ((dict(), 4), (dict(norm_type="layer"), 1), (dict(learnable_embedding_dim=3), 4)):
        _, fast = models(h, **kw)
        x1, y1 = batch(h, n, seed=6)
        x1.requires_grad_(True)
        dcell_loss(fast(x1), y1, LossConfig())[0].backward()
        kept = x1.grad
        snapshot = kept.clone()
        assert kept.abs().sum() > 0
        x2, y2 = batch(h, n, seed=7)
        x2.requires_grad_(True)
        dcell_loss(fast(x2), 10 * y2 + 1, LossConfig())[0].backward()
        assert torch.equal(kept, snapshot), kw
        if "learnable_embedding_dim" in kw:
            emb = fast.embedding.grad.clone()
            fast.zero_grad(set_to_none=False)
            dcell_loss(fast(x2), y2, LossConfig())[0].backward()
            assert not torch.equal(fast.embedding.grad, emb)  # the gradient is live, and was not aliased


def test_threads_share_a_model_in_eval_mode():
    h = hierarchy()
    _, fast = models(h)
    fast.eval()
    inputs = [batch(h, 3 + i % 4, seed=10 + i)[0] for i in range(24)]
    with torch.no_grad():
        expected = [fast(x).prediction for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(indices):
        with torch.no_grad():
            for i in indices:
                results[i] = fast(inputs[i]).prediction

    threads = [threading.Thread(target=work, args=(range(k, 24, 3),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, value in enumerate(expected):
        assert torch.equal(results[i], value), i


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_start_with_their_own_empty_workspace(clone):
    h = hierarchy()
    _, fast = models(h)
    x, y = batch(h, 4, seed=8)
    grads_of(fast, x, y)
    other = clone(fast)
    assert other._buf_workspace.tensor is None and other._grad_workspace is not fast._grad_workspace
    fast.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(fast(x).prediction, other(x).prediction)


@pytest.mark.parametrize("kw", [dict(), dict(sparse_gene_inputs=False), dict(norm_type="layer", subsystem_layers=2),
                                dict(learnable_embedding_dim=4, num_attention_heads=2)])
def test_bf16_autocast_runs_and_returns_float32_gradients(kw):
    """The training loop's bf16 autocast (CUDA there; CPU autocast here exercises the same casts): outputs near
    the float32 ones, every parameter gradient float32 and pointing the same way as in float32."""
    h = hierarchy()
    torch.manual_seed(0)
    fast = build_dcell(h, ModelConfig(init_range=0.1, **kw))
    x, y = batch(h, 8, seed=9, dtype=torch.float32)
    ref_out = fast(x).prediction.detach()
    ref = {n: g.clone() for n, g in _grads(fast, x, y, autocast=False).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x).prediction
    assert torch.allclose(out.float(), ref_out, atol=0.05 * float(ref_out.abs().max()) + 1e-3)
    got = _grads(fast, x, y, autocast=True)
    for name, g in got.items():
        assert g.dtype == torch.float32, name
        assert torch.isfinite(g).all(), name
    flat_ref = torch.cat([ref[n].reshape(-1) for n in ref])
    flat_got = torch.cat([got[n].reshape(-1) for n in ref])
    assert torch.nn.functional.cosine_similarity(flat_ref, flat_got, dim=0) > 0.98


def _grads(model, x, y, autocast: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = dcell_loss(model(x), y, LossConfig())[0]
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}
