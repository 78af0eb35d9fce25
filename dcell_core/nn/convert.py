"""Parameter exchange between the stratum-parallel model and the per-term oracle layout.

The oracle's state-dict names are the exchange format: `terms.{t}.linears.{k}.weight` [L_t, fan_in],
`terms.{t}.linears.{k}.bias` [L_t], `terms.{t}.norms.{k}.{weight,bias,running_mean,running_var}` [L_t],
`terms.{t}.head.weight` [1, L_t], `terms.{t}.head.bias` [1], plus the shared `embedding`, `token_proj.*` and
`attention.*` tensors, which carry the same names in both models. These functions loop over terms: they are
build/test-time tools, never part of a training step.
"""
from __future__ import annotations

from typing import Callable

import torch

from dcell_core.nn.oracle import OracleDCell
from dcell_core.nn.stratum import block_view
from dcell_core.nn.stratum_dcell import StratumDCell


# (parameter or buffer, index into it, oracle columns); an index ("flat", offset, rows, cols) is the [rows, cols]
# matrix stored column-major (transposed) at `offset` of a flat tensor (the stratum's unpadded gene columns);
# ("block", offset, shape, index) is `index` into the padded bucket block of `shape` at `offset` of a flat tensor
Part = tuple[torch.Tensor, tuple, slice | None]


def take(tensor: torch.Tensor, index: tuple) -> torch.Tensor:
    """The piece of `tensor` a Part's index names (a view)."""
    if index and index[0] == "flat":
        _, offset, rows, cols = index
        return tensor[offset: offset + rows * cols].view(cols, rows).t()
    if index and index[0] == "block":
        _, offset, shape, inner = index
        return block_view(tensor, offset, shape)[inner]
    return tensor[index]


def term_parts(model: StratumDCell, t: int) -> dict[str, list[Part]]:
    """Where term t's oracle tensors live in the padded bucket tensors: per oracle name, the pieces (the first
    layer's weight has two: children columns and gene columns)."""
    s, k, i = model.plan.slot[t]
    stratum = model.strata[s]
    bucket = stratum.buckets[k]
    w = model.sizes.widths[t]
    g = len(model.sizes.direct_genes[t]) * model.sizes.token_dim
    c = model.sizes.fan_in(t) - g

    def block(name: str, inner: tuple) -> tuple[torch.Tensor, tuple]:  # term i's piece of bucket k's block
        return stratum.get_parameter(name), ("block", *stratum.blocks[k][name], inner)

    first = []
    if c:
        first.append((*block("child_weight", (i, slice(0, w), slice(0, c))), slice(0, c)))
    if g:
        first.append((stratum.gene_weight, ("flat", stratum.gene_offset[t], w, g), slice(c, c + g)))
    out: dict[str, list[Part]] = {f"terms.{t}.linears.0.weight": first}
    for layer in range(1, bucket.layers):
        out[f"terms.{t}.linears.{layer}.weight"] = [(*block(f"layer_weights.{layer - 1}",
                                                            (i, slice(0, w), slice(0, w))), None)]
    for layer in range(bucket.layers):
        out[f"terms.{t}.linears.{layer}.bias"] = [(*block(f"biases.{layer}", (i, slice(0, w), 0)), None)]
    for layer in range(bucket.layers * bucket.has_affine):
        out[f"terms.{t}.norms.{layer}.weight"] = [(*block(f"norm_weights.{layer}", (i, slice(0, w))), None)]
        out[f"terms.{t}.norms.{layer}.bias"] = [(*block(f"norm_biases.{layer}", (i, slice(0, w))), None)]
        if model.cfg.norm_type == "batch":
            for stat in ("running_mean", "running_var"):
                start = stratum.rows[k].start
                buf = getattr(stratum, f"{stat}_{layer}")[start: start + bucket.n * bucket.w_max].view(
                    bucket.n, bucket.w_max)
                out[f"terms.{t}.norms.{layer}.{stat}"] = [(buf, (i, slice(0, w)), None)]
    out[f"terms.{t}.head.weight"] = [(*block("head_weight", (i, slice(None), slice(0, w))), None)]
    out[f"terms.{t}.head.bias"] = [(*block("head_bias", (i, 0, slice(None))), None)]
    return out


def term_views(model: StratumDCell, t: int, pick: Callable[[torch.Tensor], torch.Tensor | None] = lambda p: p,
               ) -> dict[str, torch.Tensor | None]:
    """Term t's tensors under oracle names (copies where a tensor has several pieces); `pick` maps a parameter
    to what to read (e.g. `lambda p: p.grad`)."""
    out: dict[str, torch.Tensor | None] = {}
    for name, parts in term_parts(model, t).items():
        values = [(pick(p) if isinstance(p, torch.nn.Parameter) else p) for p, _, _ in parts]
        if any(v is None for v in values):
            out[name] = None
        else:
            pieces = [take(v, index) for v, (_, index, _) in zip(values, parts)]
            out[name] = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    return out


def shared_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if not n.startswith(("strata.", "terms."))]


def oracle_state_dict(model: StratumDCell) -> dict[str, torch.Tensor]:
    """The model's parameters and norm statistics in the oracle's state-dict format (copies)."""
    sd = {}
    for t in range(model.sizes.num_terms):
        sd.update({k: v.detach().clone() for k, v in term_views(model, t).items()})
        if model.cfg.norm_type == "batch":
            for layer in range(model.cfg.subsystem_layers):
                sd[f"terms.{t}.norms.{layer}.num_batches_tracked"] = model.num_batches_tracked.clone()
    params = dict(model.named_parameters())
    sd.update({n: params[n].detach().clone() for n in shared_names(model)})
    return sd


def oracle_gradients(model: StratumDCell) -> dict[str, torch.Tensor | None]:
    """Gradients of every parameter under oracle names (None where no gradient was computed)."""
    grads = {}
    for t in range(model.sizes.num_terms):
        grads.update({k: v for k, v in term_views(model, t, lambda p: p.grad).items()
                      if "running_" not in k})
    params = dict(model.named_parameters())
    grads.update({n: params[n].grad for n in shared_names(model)})
    return grads


@torch.no_grad()
def load_oracle_state_dict(model: StratumDCell, sd: dict[str, torch.Tensor]) -> None:
    """Load oracle-format tensors; padded entries are set to zero. Every expected key must be present."""
    expected = oracle_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise KeyError(f"oracle state dict mismatch: missing {missing[:5]} ({len(missing)}), "
                       f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for name, value in expected.items():
        if "num_batches_tracked" not in name and value.shape != sd[name].shape:
            raise ValueError(f"{name}: expected shape {tuple(value.shape)}, got {tuple(sd[name].shape)}")
    for stratum in model.strata:
        for p in stratum.parameters():
            p.zero_()
    for t in range(model.sizes.num_terms):
        for name, parts in term_parts(model, t).items():
            for tensor, index, cols in parts:
                take(tensor, index).copy_(sd[name] if cols is None else sd[name][:, cols])
    params = dict(model.named_parameters())
    for n in shared_names(model):
        params[n].copy_(sd[n])
    if model.cfg.norm_type == "batch":
        model.num_batches_tracked.copy_(sd["terms.0.norms.0.num_batches_tracked"])


def to_oracle(model: StratumDCell) -> OracleDCell:
    oracle = OracleDCell(model.sizes, model.cfg).to(dtype=_dtype(model))
    oracle.load_state_dict(oracle_state_dict(model))
    return oracle.train(model.training)


def from_oracle(oracle: OracleDCell) -> StratumDCell:
    model = StratumDCell(oracle.sizes, oracle.cfg).to(dtype=_dtype(oracle))
    load_oracle_state_dict(model, oracle.state_dict())
    return model.train(oracle.training)


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
