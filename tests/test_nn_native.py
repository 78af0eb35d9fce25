"""The model's C++ ops (dcell_core/nn/native.py, csrc/stratum_ops.cpp): the row-gather gradient against
index_add_, the fused children read against the gather and matmuls it replaces, tanh + batch norm against
F.batch_norm, their errors on bad input, and the build cache's naming and failure message. The per-bucket loops are
checked against the per-term oracle through the whole model (tests/test_nn_equivalence.py and the other test_nn_*
files)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.model import synthetic_hierarchy
from dcell_core.nn import LossConfig, ModelConfig, build_dcell, dcell_loss, native, reads, stratum_dcell
from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS
from dcell_core.nn.stratum import RowRead, row_read, rows_add_
from dcell_core.nn.stratum_ops import BucketRows, GeneSlots, TanhNorm, add_gene_columns, gene_columns_grad


def row_gather(num_rows: int, reads: int, seed: int) -> RowRead:
    rng = np.random.default_rng(seed)
    index = rng.integers(0, num_rows, reads)
    index[::5] = 0  # padding reads of the zero row, as the plan lays them out
    return RowRead(*(torch.from_numpy(v) for v in row_read(index)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 7, 32, 256])
def test_rows_add_equals_index_add_except_the_zero_row(dtype, batch):
    read = row_gather(500, 3000, seed=batch)
    assert len(read.dest) < 500 and len(read.order) < len(read.index)  # duplicates and padding both present
    src = torch.randn(len(read.index), batch, dtype=dtype)
    start = torch.randn(500, batch, dtype=dtype)
    want = start.clone().index_add_(0, read.index, src)
    want[0] = start[0]  # the zero row's gradient is never read: left out
    got = start.clone()
    rows_add_(got, read, src)
    torch.testing.assert_close(got, want, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-6)
    again = start.clone()
    rows_add_(again, read, src)
    assert torch.equal(got, again)  # deterministic: one thread per destination row, positions in gather order


def test_row_read_groups_positions_by_row():
    index = np.array([3, 0, 1, 3, 2, 0, 1, 3])
    _, order, dest, ptr = row_read(index)
    assert dest.tolist() == [1, 2, 3]
    assert ptr.tolist() == [0, 2, 3, 6]
    assert order.tolist() == [2, 6, 4, 0, 3, 7]  # each row's positions in gather order; the zero row's dropped


def test_rows_add_rejects_bad_input_with_one_clear_error():
    read = row_gather(50, 200, seed=0)
    src = torch.randn(200, 4)
    with pytest.raises(ValueError, match="rows_add_: target is Double, src Float"):
        rows_add_(torch.zeros(50, 4, dtype=torch.float64), read, src)
    with pytest.raises(ValueError, match="must be contiguous"):
        rows_add_(torch.zeros(4, 50).t(), read, src)
    with pytest.raises(ValueError, match=r"dest \(ascending\) must lie in the target's 20 rows"):
        rows_add_(torch.zeros(20, 4), read, src)
    with pytest.raises(IndexError, match="outside src's 100 rows"):
        rows_add_(torch.zeros(50, 4), read, src[:100])


def test_linear_forward_names_a_block_that_does_not_fit():
    ops = native.ops()
    bias = torch.zeros(6)
    weight = torch.zeros(2 * 3 * 4 - 1)  # one bucket of 2 terms x 3 rows x 4 columns, one element short
    with pytest.raises(ValueError, match="StratumLinear: weight has 23 elements, the buckets' blocks 24"):
        ops.linear_forward(bias, weight, torch.zeros(2 * 4 * 5), None, None, [2], [3], [4], [0], [5], [0])
    with pytest.raises(ValueError, match="the bucket lists differ in length"):
        ops.linear_forward(bias, None, None, None, None, [2], [3], [], [0], [5], [0])


def test_build_cache_is_named_by_source_and_flags(tmp_path, monkeypatch):
    copy = tmp_path / "stratum_ops.cpp"
    copy.write_bytes(native.SOURCE.read_bytes())
    monkeypatch.setattr(native, "SOURCE", copy)
    same = native.module_name()
    assert same.startswith("dcell_stratum_ops_")
    copy.write_bytes(native.SOURCE.read_bytes() + b"// changed\n")
    assert native.module_name() != same
    copy.write_bytes(copy.read_bytes()[:-len(b"// changed\n")])
    assert native.module_name() == same
    monkeypatch.setattr(native, "CFLAGS", ("-O2",))
    assert native.module_name() != same
    monkeypatch.setenv("DCELL_EXTENSIONS_DIR", str(tmp_path / "cache"))
    assert native.build_dir() == tmp_path / "cache"


def test_a_failed_build_names_the_source_and_leaves_nothing(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    library = tmp_path / "cache" / "dcell_broken.so"
    message = (f"(?s)building the model's C\\+\\+ ops from {broken} in {library.parent}/dcell_broken.build-.* "
               f"failed.*this source does not compile")
    with pytest.raises(RuntimeError, match=message):
        native._build("dcell_broken", library)
    assert list(library.parent.iterdir()) == []  # no library, no build folder


@pytest.mark.slow
def test_a_fresh_cache_builds_the_library_in_place(tmp_path):
    """What a machine that did not run scripts/setup.sh does on its first model: build into the cache, then
    import from there (in a child process: this one has its library loaded already)."""
    env = {**os.environ, "DCELL_EXTENSIONS_DIR": str(tmp_path)}
    code = ("from dcell_core.nn import native; m = native.ops(); "
            "print(m.__file__, all(hasattr(m, f) for f in ('linear_forward', 'linear_backward', 'heads_forward', "
            "'heads_backward')))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    path, complete = run.stdout.split()
    assert complete == "True" and path == str(tmp_path / f"{native.module_name()}.so")
    assert [p.name for p in tmp_path.iterdir()] == [f"{native.module_name()}.so"]  # the build folder is gone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [3, 32, 40])
def test_heads_kernel_equals_the_per_bucket_matmuls(dtype, batch):
    """The CPU heads kernel (contiguous float/double tensors) against the per-bucket batched matmuls, which run
    for any other input (here: the same values in a transposed layout)."""
    ops = native.ops()
    n, w, start = [3, 1, 2], [4, 7, 2], [0, 12, 19]  # three buckets, 6 terms, 23 rows
    rows, terms = 23, 6
    gen = torch.Generator().manual_seed(batch)
    o, g = (torch.randn(k, batch, dtype=dtype, generator=gen) for k in (rows, terms))
    weight, bias = torch.randn(rows, dtype=dtype, generator=gen), torch.randn(terms, dtype=dtype, generator=gen)
    strided = o.t().contiguous().t()  # same values, not contiguous: the matmul path
    assert not strided.is_contiguous()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.heads_forward(o, weight, bias, n, w, start),
                               ops.heads_forward(strided, weight, bias, n, w, start), **tol)
    start_target = torch.randn(rows, batch, dtype=dtype, generator=gen)
    got_target, want_target = start_target.clone(), start_target.clone().t().contiguous().t()
    got = ops.heads_backward(o, weight, g, got_target, True, n, w, start)
    want = ops.heads_backward(strided, weight, g, want_target, True, n, w, start)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got_target, want_target, **tol)
    assert ops.heads_backward(o, weight, g, None, False, n, w, start) is None
    with pytest.raises(ValueError, match="heads_forward: 5 head biases for 6 terms"):
        ops.heads_forward(o, weight, bias[:5], n, w, start)


def fused_read_step(h, x, y, fused: bool, monkeypatch, chunk_bytes: int | None = None):
    """Output, every parameter gradient and the running statistics of one training step, with the fused children
    read (ReadLinear) on or off (ReadStratum + StratumLinear), from the same initial weights."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(stratum_dcell, "fuses_read", lambda *args: False)
        if chunk_bytes is not None:
            patch.setattr(reads, "READ_CHUNK_BYTES", chunk_bytes)
        torch.manual_seed(0)
        model = build_dcell(h, ModelConfig(init_range=0.3)).to(x.dtype)
        calls = []
        patch.setattr(reads.ReadLinear, "forward", counted(reads.ReadLinear.forward, calls))
        out = model(x)
        dcell_loss(out, y, LossConfig())[0].backward()
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.prediction.detach(), grads, state, len(calls)


def counted(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return staticmethod(wrapper)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_bytes", [None, 64])
@pytest.mark.parametrize("batch", [24, 160])
@pytest.mark.parametrize("values", ["binary", "weighted"])
def test_fused_read_equals_the_gather_and_matmuls(dtype, chunk_bytes, batch, values, monkeypatch):
    """The children read fused with the first layer (in chunks of terms; 64 bytes: one term per chunk) against the
    gather + per-bucket matmuls + row add it replaces: the same output, gradients and batch-norm statistics, bit
    for bit (same matmuls on row blocks of the same views, the row additions in the same order, the gene columns
    added per chunk in the order of the whole-stratum scatter). Batch 24: rows under 512 bytes, the input gradient
    added whole by rows_add_; batch 160: added chunk by chunk. "weighted": genotype values other than 1."""
    h = synthetic_hierarchy(num_genes=300, strata=[40, 25, 12, 6, 2, 1], annotations_per_gene=3.0, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.zeros(batch, h.num_genes, dtype=dtype)
    x[torch.arange(batch).repeat_interleave(3), torch.randint(h.num_genes, (3 * batch,), generator=gen)] = 1.0
    if values == "weighted":
        x *= torch.rand(batch, h.num_genes, generator=gen, dtype=dtype) + 0.5
    y = torch.randn(batch, generator=gen, dtype=dtype)
    out_f, grads_f, state_f, calls_f = fused_read_step(h, x, y, True, monkeypatch, chunk_bytes)
    out_u, grads_u, state_u, calls_u = fused_read_step(h, x, y, False, monkeypatch, chunk_bytes)
    assert calls_u == 0 and calls_f >= 4  # every stratum above 0 reads through it (stratum 0 reads nothing)
    assert torch.equal(out_f, out_u)
    assert grads_f.keys() == grads_u.keys() and len(grads_f) > 10
    for name in grads_f:
        assert torch.equal(grads_f[name], grads_u[name]), name
    for name in state_f:
        assert torch.equal(state_f[name], state_u[name]), name


def test_a_retained_graph_refuses_backward_after_the_next_forward():
    """Fused reads read the activation buffer again in backward: a graph kept with retain_graph=True can run
    backward again (the same gradients), but not once a later forward pass has taken the buffer; that is one
    clear error, not gradients from another batch."""
    h = synthetic_hierarchy(num_genes=200, strata=[20, 10, 4, 1], annotations_per_gene=3.0, seed=3)
    torch.manual_seed(0)
    model = build_dcell(h, ModelConfig()).double()
    x = (torch.rand(6, h.num_genes, generator=torch.Generator().manual_seed(4)) < 0.02).double()
    y = torch.randn(6, dtype=torch.float64)
    loss = dcell_loss(model(x), y, LossConfig())[0]
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    for name, value in first.items():
        assert torch.equal(model.get_parameter(name).grad, value), name
    model(torch.flip(x, [0]))  # no graph kept: the buffer is released and taken again
    with pytest.raises(RuntimeError, match="activation buffer a later forward pass has overwritten"):
        loss.backward()


def test_read_linear_rejects_bad_input_with_one_clear_error():
    ops = native.ops()
    buf = torch.zeros(10, 4)
    index = torch.tensor([1, 2, 3, 0, 4, 5], dtype=torch.long)  # one bucket: 2 terms x 3 children rows
    bias, weight = torch.zeros(2 * 2), torch.zeros(2 * 2 * 3)
    no_genes = (None, None, None)
    with pytest.raises(ValueError, match="weight has 11 elements and the index 6, the buckets' blocks 12 and 6"):
        ops.read_linear_forward(buf, index, bias, weight[:11], [2], [2], [3], [0], 1 << 20, *no_genes)
    with pytest.raises(ValueError, match="contiguous float or double CPU"):
        ops.read_linear_forward(buf.t(), index, bias, weight, [2], [2], [3], [0], 1 << 20, *no_genes)
    with pytest.raises(IndexError, match="index 12 outside the 10 buffer rows"):
        ops.read_linear_backward(torch.zeros(4, 4), buf, *RowRead(*map(torch.from_numpy, row_read(
            np.array([1, 2, 12, 0, 4, 5])))), weight, torch.zeros(10, 4), [2], [2], [3], [0], True, True, 1 << 20,
            *no_genes)
    # gene slots (row, length, column, sample), sorted by row, inside the stratum's rows, gene weights and batch
    gene_weight = torch.zeros(6)
    for slots, what in ((torch.tensor([[2, 2, 0, 1], [0, 2, 2, 3]]), "gene slot 1 .row 0, length 2, column 2, "
                         "sample 3. is out of order"),
                        (torch.tensor([[3, 2, 0, 1]]), "gene slot 0 .row 3, length 2.* outside the 4 rows"),
                        (torch.tensor([[0, 2, 5, 1]]), "gene slot 0 .* outside the 4 rows, 6 gene weights"),
                        (torch.tensor([[0, 2, 0, 4]]), "sample 4. .* or 4 samples")):
        with pytest.raises(ValueError, match=what):
            ops.read_linear_forward(buf, index, bias, weight, [2], [2], [3], [0], 1 << 20, slots, gene_weight, None)
    with pytest.raises(ValueError, match="one per slot"):
        ops.read_linear_forward(buf, index, bias, weight, [2], [2], [3], [0], 1 << 20,
                                torch.tensor([[0, 2, 0, 1]]), gene_weight, torch.ones(2))


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_read_gene_slots_equal_the_element_scatter(weighted):
    """The gene columns of the fused read, applied per chunk from slots (split among threads at row boundaries when
    a chunk holds many), against the per-element scatter (`add_gene_columns`, `gene_columns_grad`) after the
    matmuls: the same output and gene weight gradient bit for bit, with many slots adding into the same elements
    (two genes of one term disrupted in one sample) and one term's gene column hit in many samples."""
    gen = torch.Generator().manual_seed(5)
    n, w, k, B, rows_buf = 40, 6, 5, 64, 300
    buf = torch.randn(rows_buf, B, generator=gen, dtype=torch.float64)
    index = torch.randint(1, rows_buf, (n * k,), generator=gen)
    bias = torch.randn(n * w, generator=gen, dtype=torch.float64)
    weight = torch.randn(n * w * k, generator=gen, dtype=torch.float64)
    genes_per_term = 7
    gene_weight = torch.randn(n * w * genes_per_term, generator=gen, dtype=torch.float64)
    m = 6000
    term = torch.randint(0, n, (m,), generator=gen)
    col = term * w * genes_per_term + torch.randint(0, genes_per_term, (m,), generator=gen) * w
    length = torch.randint(1, w + 1, (m,), generator=gen)
    b = torch.randint(0, B, (m,), generator=gen)
    order = torch.sort(term, stable=True).indices
    slots = GeneSlots(term[order] * w, length[order], col[order], b[order],
                      torch.rand(m, generator=gen, dtype=torch.float64)[order] + 0.5 if weighted else None, B)
    ops = native.ops()
    args = ([n], [w], [k], [0], 1 << 30)  # one chunk: all slots at once
    got = ops.read_linear_forward(buf, index, bias, weight, *args, slots.table, gene_weight, slots.value)
    want = ops.read_linear_forward(buf, index, bias, weight, *args, None, None, None)
    add_gene_columns(want.view(-1), slots.elements(), gene_weight)
    assert torch.equal(got, want)
    grad = torch.randn(n * w, B, generator=gen, dtype=torch.float64)
    read = RowRead(*map(torch.from_numpy, row_read(index.numpy())))
    got_grads = ops.read_linear_backward(grad, buf, *read, weight, None, *args[:4], True, True, args[4], slots.table,
                                         gene_weight, slots.value)
    want_grads = ops.read_linear_backward(grad, buf, *read, weight, None, *args[:4], True, True, args[4], None,
                                          None, None)
    assert want_grads[2] is None
    assert torch.equal(got_grads[0], want_grads[0]) and torch.equal(got_grads[1], want_grads[1])
    assert torch.equal(got_grads[2], gene_columns_grad(grad.view(-1), slots.elements(), gene_weight.shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [2, 32, 37, 256, 2000])
@pytest.mark.parametrize("heads", [False, True])
def test_tanh_norm_equals_batch_norm_of_tanh(dtype, batch, heads):
    """TanhNorm (the CPU kernel of tanh then batch norm in training) against F.batch_norm(torch.tanh(z)): output,
    the running statistics and the gradients of z, gain and shift; with the heads, also the heads against
    heads_forward of that output (two buckets of terms, several row blocks at batch 2000), the output only in
    `dest`, and the head parameters' gradients, the heads' gradient flowing into z's."""
    gen = torch.Generator().manual_seed(batch)
    buckets = (BucketRows(0, 7, 4), BucketRows(28, 21, 2))
    rows = 70
    z = (2 * torch.randn(rows, batch, generator=gen, dtype=dtype)).requires_grad_(True)
    gain = torch.randn(rows, generator=gen, dtype=dtype).requires_grad_(True)
    shift = torch.randn(rows, generator=gen, dtype=dtype).requires_grad_(True)
    head_w = torch.randn(rows, generator=gen, dtype=dtype).requires_grad_(True)
    head_b = torch.randn(28, generator=gen, dtype=dtype).requires_grad_(True)
    stats = [torch.randn(rows, generator=gen, dtype=dtype), torch.rand(rows, generator=gen, dtype=dtype) + 0.5]
    want_stats = [s.clone() for s in stats]
    dest = torch.full((rows, batch), float("nan"), dtype=dtype)
    want = torch.nn.functional.batch_norm(torch.tanh(z).unsqueeze(0), *want_stats, gain, shift, True, BN_MOMENTUM,
                                          NORM_EPS).squeeze(0)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    upstream = torch.randn(rows, batch, generator=gen, dtype=dtype)
    params = (z, gain, shift)
    if heads:
        stand_in, got_heads = TanhNorm.apply(z, gain, shift, *stats, dest, buckets, head_w, head_b)
        assert stand_in.shape == (rows, batch) and not stand_in.bool().any()  # the output is in dest only
        out = dest
        term = torch.tensor([i for i in range(7) for _ in range(4)] + [7 + i for i in range(21) for _ in range(2)])
        want_heads = head_b.unsqueeze(1) + torch.zeros(28, batch, dtype=dtype).index_add(
            0, term, head_w.unsqueeze(1) * want)
        torch.testing.assert_close(got_heads, want_heads, **tol)
        up_heads = torch.randn(28, batch, generator=gen, dtype=dtype)
        params += (head_w, head_b)
        grads = torch.autograd.grad((got_heads, stand_in), params, (up_heads, upstream))
        expected = torch.autograd.grad((want_heads, want), params, (up_heads, upstream), retain_graph=True)
        # without dest: the output returned, the same values; a backward with the heads' gradient alone
        again, again_heads = TanhNorm.apply(z, gain, shift, *[s.clone() for s in stats], None, buckets, head_w,
                                            head_b)
        assert torch.equal(again, dest) and torch.equal(again_heads, got_heads)
        for g, e in zip(torch.autograd.grad(again_heads, params, up_heads),
                        torch.autograd.grad(want_heads, params, up_heads)):
            torch.testing.assert_close(g, e, **tol)
    else:
        out = TanhNorm.apply(z, gain, shift, *stats, None, None, None, None)
        grads = torch.autograd.grad(out, params, upstream)
        expected = torch.autograd.grad(want, params, upstream)
    torch.testing.assert_close(out, want, **tol)
    for got, expect in zip(stats, want_stats):
        torch.testing.assert_close(got, expect, **tol)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, **tol)
    with pytest.raises(ValueError, match="batch norm needs more than one sample per row, got 1"):
        native.ops().tanh_norm_forward(z.detach()[:, :1].contiguous(), gain.detach(), shift.detach(), 1e-5, None,
                                       None, None, [], [], [])
