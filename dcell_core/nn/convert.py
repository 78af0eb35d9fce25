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
from dcell_core.nn.stratum_dcell import StratumDCell


def term_views(model: StratumDCell, t: int, pick: Callable[[torch.Tensor], torch.Tensor | None] = lambda p: p,
               ) -> dict[str, torch.Tensor | None]:
    """Term t's slices of the padded bucket tensors, under oracle names; `pick` maps a parameter to what to
    slice (e.g. `lambda p: p.grad`)."""
    s, k, i = model.plan.slot[t]
    bucket = model.strata[s].buckets[k]
    w, f = model.sizes.widths[t], model.sizes.fan_in(t)
    out: dict[str, torch.Tensor | None] = {}

    def cut(tensor, *index):
        value = pick(tensor) if isinstance(tensor, torch.nn.Parameter) else tensor
        return None if value is None else value[index]

    for layer, (weight, bias) in enumerate(zip(bucket.weights, bucket.biases)):
        cols = f if layer == 0 else w
        out[f"terms.{t}.linears.{layer}.weight"] = cut(weight, i, slice(0, w), slice(0, cols))
        out[f"terms.{t}.linears.{layer}.bias"] = cut(bias, i, slice(0, w), 0)
    for layer, (gain, shift) in enumerate(zip(bucket.norm_weights, bucket.norm_biases)):
        out[f"terms.{t}.norms.{layer}.weight"] = cut(gain, i, slice(0, w))
        out[f"terms.{t}.norms.{layer}.bias"] = cut(shift, i, slice(0, w))
        if model.cfg.norm_type == "batch":
            for stat in ("running_mean", "running_var"):
                buf = getattr(bucket, f"{stat}_{layer}").view(bucket.n, bucket.w_max)
                out[f"terms.{t}.norms.{layer}.{stat}"] = cut(buf, i, slice(0, w))
    out[f"terms.{t}.head.weight"] = cut(bucket.head_weight, i, slice(None), slice(0, w))
    out[f"terms.{t}.head.bias"] = cut(bucket.head_bias, i, 0, slice(None))
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
    expected = set(oracle_state_dict(model))
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"oracle state dict mismatch: missing {missing[:5]} ({len(missing)}), "
                       f"unexpected {unexpected[:5]} ({len(unexpected)})")
    for bucket in model.buckets():
        for p in bucket.parameters():
            p.zero_()
    for t in range(model.sizes.num_terms):
        for name, view in term_views(model, t).items():
            if view.shape != sd[name].shape:
                raise ValueError(f"{name}: expected shape {tuple(view.shape)}, got {tuple(sd[name].shape)}")
            view.copy_(sd[name])
    params = dict(model.named_parameters())
    for n in shared_names(model):
        params[n].copy_(sd[n])
    if model.cfg.norm_type == "batch":
        model.num_batches_tracked.copy_(sd[f"terms.0.norms.0.num_batches_tracked"])


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
