"""The stratum-parallel model's own element-wise kernels against the torch ops they stand in for: tanh through
NumPy (`fast_tanh`), the 1-D scatter-add (`flat_add_`) and the index runs of the sparse entries
(`ragged_ranges`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcell_core.nn.common import (NumpyTanh, activation_fn, fast_tanh, flat_add_, ragged_ranges,
                                  ragged_ranges_by_scan)


def _values(dtype: torch.dtype) -> torch.Tensor:
    """Values across tanh's regimes: tiny (where tanh(x) ~ x and any cancellation shows), moderate, saturated."""
    g = torch.Generator().manual_seed(0)
    mags = torch.cat([torch.logspace(-30, 1.5, 3997, dtype=torch.float64), torch.tensor([0.0, 20.0, 1e4])])
    signs = torch.where(torch.rand(len(mags), generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return (mags * signs).to(dtype).reshape(-1, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_tanh_is_within_two_ulp_of_the_exact_value_and_keeps_its_sign(dtype):
    x = _values(dtype)
    exact = np.tanh(x.to(torch.float64).numpy().astype(np.longdouble))
    got = fast_tanh(x)
    assert got.dtype == dtype and got.shape == x.shape
    ulp = np.spacing(np.abs(got.numpy())).astype(np.longdouble)
    err = np.abs(got.numpy().astype(np.longdouble) - exact) / ulp
    assert err.max() <= 2.0, f"max error {float(err.max()):.2f} ulp"
    assert torch.equal(torch.sign(got), torch.sign(x))  # no cancellation to zero or across zero near x = 0


def test_fast_tanh_gradient_is_torch_tanh_gradient_in_float64():
    x = _values(torch.float64).requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = fast_tanh(x)
    (got,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(got, g * (1 - y.detach() ** 2), rtol=1e-14, atol=1e-15)  # d tanh = 1 - tanh^2
    x2 = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(torch.tanh(x2), x2, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)  # 1 - y^2 cancels where tanh saturates
    assert torch.autograd.gradcheck(NumpyTanh.apply, (torch.randn(5, 3, dtype=torch.float64, requires_grad=True),))


def test_fast_tanh_of_a_strided_view_and_of_other_dtypes_and_layouts():
    base = torch.randn(6, 8)
    view = base.t()[::2]  # non-contiguous
    torch.testing.assert_close(fast_tanh(view), torch.tanh(view), rtol=2.5e-7, atol=0.0)
    half = torch.randn(4, 4).to(torch.bfloat16)  # NumPy has no bfloat16: torch's kernel
    assert fast_tanh(half).dtype == torch.bfloat16
    assert torch.equal(fast_tanh(half), torch.tanh(half))


def test_only_the_stratum_model_uses_the_numpy_tanh():
    assert activation_fn("tanh") is torch.tanh  # the oracle, the reference
    assert activation_fn("tanh", fast=True) is fast_tanh
    assert activation_fn("relu", fast=True) is activation_fn("relu")


def test_flat_add_equals_index_add_bitwise_with_repeated_indices():
    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, 50, (100_000,), generator=g)  # every target hit ~2,000 times: order matters
    src = torch.randn(100_000, generator=g) * 1e3
    want = torch.zeros(50).index_add_(0, index, src)
    got = torch.zeros(50)
    assert flat_add_(got, index, src) is got
    assert torch.equal(got, want)


def _scan(base, length, stride=1, total=None):
    return ragged_ranges_by_scan(base, length, stride, int(length.sum()) if total is None else total)


@pytest.mark.parametrize("impl", [ragged_ranges, _scan], ids=["cpu_kernel", "scan"])
@pytest.mark.parametrize("stride", [1, 7, 256])
def test_ragged_ranges_is_the_concatenation_of_the_runs(stride, impl):
    g = torch.Generator().manual_seed(1)
    length = torch.randint(1, 40, (500,), generator=g)
    length[::37] = 1  # runs of one element between longer ones
    base = torch.randint(-10_000, 10_000_000, (500,), generator=g)  # any order, negative and overlapping included
    expected = torch.cat([b + stride * torch.arange(n) for b, n in zip(base.tolist(), length.tolist())])
    got = impl(base, length, stride)
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert torch.equal(impl(base, length, stride, int(length.sum())), expected)
    assert torch.equal(impl(base[:1], length[:1], stride), expected[:int(length[0])])
    assert impl(base[:0], length[:0], stride).numel() == 0
    # strided inputs (a column of a table) and a run long enough to be split among threads
    table = torch.stack([base[:20], length[:20] * 5000], 1)  # ~2 M elements
    long_runs = torch.cat([b + stride * torch.arange(n) for b, n in zip(*table.t().tolist())])
    assert torch.equal(impl(table[:, 0], table[:, 1], stride), long_runs)


@pytest.mark.parametrize("impl", [ragged_ranges, _scan], ids=["cpu_kernel", "scan"])
def test_ragged_ranges_refuses_an_empty_run(impl):
    with pytest.raises(ValueError, match="length >= 1, got 0"):
        impl(torch.tensor([5, 9, 20]), torch.tensor([2, 0, 3]))


def test_ragged_ranges_refuses_a_wrong_total():
    with pytest.raises(ValueError, match="total 6 is not the sum of the lengths, 5"):
        ragged_ranges(torch.tensor([5, 9]), torch.tensor([2, 3]), 1, 6)
