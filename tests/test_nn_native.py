"""The model's C++ ops (dcell_core/nn/native.py, csrc/stratum_ops.cpp): the row-gather gradient against
index_add_, their errors on bad input, and the build cache's naming and failure message. The per-bucket loops are
checked against the per-term oracle through the whole model (tests/test_nn_equivalence.py and the other test_nn_*
files)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dcell_core.nn import native
from dcell_core.nn.stratum import RowRead, row_read, rows_add_


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
