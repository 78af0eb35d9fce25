"""Pieces shared by the per-term oracle and the stratum-parallel model: term sizes, output type, activations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from dcell_core.nn.config import ModelConfig
from dcell_core.nn.native import ops
from dcell_core.ontology.hierarchy import Hierarchy


class DCellOutput(NamedTuple):
    prediction: torch.Tensor  # [B] root head
    aux: torch.Tensor  # [B, T-1] auxiliary heads of the non-root terms, in term index order
    # [B, sum L_t] every term's output O_t, in term index order (columns term_offsets[t]:term_offsets[t+1]);
    # only with forward(x, return_states=True), else None.
    states: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class TermSizes:
    """Plain-int description of the network a hierarchy and a config define (what the modules are built from)."""
    children: tuple[tuple[int, ...], ...]  # child term indices per term
    direct_genes: tuple[tuple[int, ...], ...]  # gene indices per term (input order of the gene features)
    num_genes: int
    widths: tuple[int, ...]  # L_t
    token_dim: int  # features per (term, gene) input

    @property
    def num_terms(self) -> int:
        return len(self.widths)

    def fan_in(self, t: int) -> int:
        """Inputs of term t's first linear layer: child outputs first (child order), then gene features."""
        return sum(self.widths[c] for c in self.children[t]) + len(self.direct_genes[t]) * self.token_dim

    def subtree_matrix(self) -> np.ndarray:
        """bool [T, G]: gene g is annotated to term t or to a descendant (children precede parents)."""
        out = np.zeros((self.num_terms, self.num_genes), dtype=bool)
        for t, (kids, genes) in enumerate(zip(self.children, self.direct_genes)):
            out[t, list(genes)] = True
            if kids:
                out[t] |= out[list(kids)].any(axis=0)
        return out

    def term_offsets(self) -> list[int]:
        out = [0]
        for w in self.widths:
            out.append(out[-1] + w)
        return out

    def strata(self) -> list[int]:
        """stratum(t) = 0 without children else 1 + max over children (children have smaller indices)."""
        strata: list[int] = []
        for t, kids in enumerate(self.children):
            if any(c >= t for c in kids):
                raise ValueError(f"term {t} has a child with index >= its own; terms must be in stratum order")
            strata.append(1 + max((strata[c] for c in kids), default=-1))
        return strata


def term_sizes(hierarchy: Hierarchy, cfg: ModelConfig) -> TermSizes:
    cfg.validate()
    if hierarchy.root != hierarchy.num_terms - 1:
        raise ValueError(f"the root must be the last term, found root index {hierarchy.root} of "
                         f"{hierarchy.num_terms} terms")
    return TermSizes(children=tuple(tuple(k) for k in hierarchy.children),
                     direct_genes=tuple(tuple(g) for g in hierarchy.direct_genes),
                     num_genes=hierarchy.num_genes,
                     widths=tuple(hierarchy.widths(cfg.width_basis, cfg.width_ratio, cfg.min_width)),
                     token_dim=cfg.token_dim)


def ragged_steps(count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ragged runs of count[i] elements each, concatenated: every element's run i and its step inside the run
    (0 .. count[i] - 1), both int64 [sum(count)]."""
    src = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)
    return src, torch.arange(len(src), device=count.device) - (torch.cumsum(count, 0) - count)[src]


def ragged_ranges(base: torch.Tensor, length: torch.Tensor, stride: int = 1, total: int | None = None
                  ) -> torch.Tensor:
    """The runs base[i], base[i] + stride, ..., base[i] + (length[i] - 1) * stride for every i, concatenated:
    int64 [sum(length)] (`total`, when the caller knows it). Every length must be >= 1. On the CPU one C++ loop
    writes each element once (csrc ragged_ranges); elsewhere `ragged_ranges_by_scan`."""
    if total is None:
        total = int(length.sum())
    if base.device.type == "cpu" and base.dtype == length.dtype == torch.long:
        return ops().ragged_ranges(base.contiguous(), length.contiguous(), stride, total)
    return ragged_ranges_by_scan(base, length, stride, total)


def ragged_ranges_by_scan(base: torch.Tensor, length: torch.Tensor, stride: int, total: int) -> torch.Tensor:
    """`ragged_ranges` from tensor ops on any device: one fill, one scatter of the jumps at the runs' starts and
    one cumulative sum, a few passes over the output instead of the expansion of base per element
    (repeat_interleave) plus a step; see docs/performance.md, "On an Intel Xeon machine"."""
    out = torch.full((total,), stride, dtype=torch.long, device=base.device)
    if len(length) == 0:
        return out
    if int(length.min()) < 1:
        raise ValueError(f"ragged_ranges: every run needs length >= 1, got {int(length.min())}")
    first = torch.cumsum(length, 0) - length
    jump = base.clone()
    jump[1:] -= base[:-1] + (length[:-1] - 1) * stride  # from the previous run's last value to this run's base
    return out.index_copy_(0, first, jump).cumsum_(0)


class NumpyTanh(torch.autograd.Function):
    """tanh of a float32/float64 CPU tensor computed by NumPy's vectorized kernel; backward as torch.tanh's.
    PyTorch's CPU tanh is compute-bound and several times slower than NumPy's, which stays within 2 ulp
    (tests/test_nn_kernels.py); the timings are in docs/performance.md, "Element-wise kernels"."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        h = h.detach().contiguous()
        out = torch.empty_like(h)
        np.tanh(h.numpy(), out=out.numpy())
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, out)


def fast_tanh(h: torch.Tensor) -> torch.Tensor:
    """torch.tanh, through NumPy (`NumpyTanh`) for float32/float64 CPU tensors."""
    if h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64) and h.layout == torch.strided:
        return NumpyTanh.apply(h)
    return torch.tanh(h)


def flat_add_(target: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """target[index[i]] += src[i] in place for 1-D tensors, in element order (deterministic on the CPU). On the CPU
    through scatter_add_, which index_add_ of a 1-D tensor calls after extra work of its own (timings:
    docs/performance.md, "Element-wise kernels"); index_add_ elsewhere."""
    if target.device.type == "cpu":
        return target.scatter_add_(0, index, src)
    return target.index_add_(0, index, src)


def activation_fn(name: str, fast: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation `name`; `fast`: tanh through `fast_tanh` (the stratum-parallel model; the oracle keeps
    torch.tanh, the reference)."""
    table = {"tanh": fast_tanh if fast else torch.tanh, "gelu": F.gelu, "relu": F.relu, "selu": F.selu,
             "leaky_relu": lambda h: F.leaky_relu(h, 0.01)}
    if name not in table:
        raise ValueError(f"activation: {name!r} not in {sorted(table)}")
    return table[name]


def check_genotypes(x: torch.Tensor, num_genes: int) -> None:
    if x.dim() != 2 or x.shape[1] != num_genes:
        raise ValueError(f"expected a dense genotype batch [B, {num_genes}], got shape {tuple(x.shape)}")


NORM_EPS = 1e-5  # BatchNorm1d / LayerNorm default
BN_MOMENTUM = 0.1  # BatchNorm1d default
