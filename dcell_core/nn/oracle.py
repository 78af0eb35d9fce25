"""The per-term reference DCell: a plain Python loop over terms in index order, one module per term.

Slow on purpose (one set of small kernels per term) and written to read like the definition:
    I_t = [O_c for children c of t] ++ [gene inputs of t's direct genes]
    O_t = Norm(Act(W_t I_t + b_t))   (or Act(Norm(.)) with norm_order="norm_act"), repeated subsystem_layers times
    aux_t = head_t(O_t); the root's head is the prediction.
It is the reference for tests and the baseline of benchmarks/model.py. Parameter names (`terms.{t}.linears.{k}`,
`terms.{t}.norms.{k}`, `terms.{t}.head`, `embedding`, `token_proj`, `attention`) are the exchange format the
stratum-parallel model converts to and from.
"""
from __future__ import annotations

import torch
from torch import nn

from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS, DCellOutput, TermSizes, activation_fn, check_genotypes
from dcell_core.nn.config import ModelConfig


class OracleTerm(nn.Module):
    """One term: `layers` Linear+Act+Norm layers of width L_t and a head L_t -> 1."""

    def __init__(self, fan_in: int, width: int, layers: int, norm_type: str):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(fan_in if k == 0 else width, width) for k in range(layers))
        self.norms = nn.ModuleList(_norm(norm_type, width) for _ in range(layers))
        self.head = nn.Linear(width, 1)


def _norm(norm_type: str, width: int) -> nn.Module:
    if norm_type == "batch":
        return nn.BatchNorm1d(width, eps=NORM_EPS, momentum=BN_MOMENTUM)
    if norm_type == "layer":
        return nn.LayerNorm(width, eps=NORM_EPS)
    if norm_type == "none":
        return nn.Identity()
    raise ValueError(f"norm_type: {norm_type!r} not in ['batch', 'layer', 'none']")


class OracleDCell(nn.Module):
    def __init__(self, sizes: TermSizes, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.sizes, self.cfg = sizes, cfg
        self.act = activation_fn(cfg.activation)
        self.terms = nn.ModuleList(
            OracleTerm(sizes.fan_in(t), sizes.widths[t], cfg.subsystem_layers, cfg.norm_type)
            for t in range(sizes.num_terms))
        d, heads = cfg.learnable_embedding_dim, cfg.num_attention_heads
        self.embedding = nn.Parameter(torch.empty(sizes.num_genes, d)) if d > 0 else None  # [G, d]
        self.token_proj = nn.Linear(1, cfg.token_dim) if heads > 0 and d == 0 else None
        self.attention = nn.MultiheadAttention(cfg.token_dim, heads, batch_first=True) if heads > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        for name, p in self.named_parameters():
            if name == "embedding":
                nn.init.uniform_(p, -1.0, 1.0)
            elif ".norms." in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -r, r)

    def head_biases(self) -> list[torch.Tensor]:
        """Every head's bias (the root's and the auxiliary terms')."""
        return [term.head.bias for term in self.terms]

    def decay_weights(self) -> list[torch.Tensor]:
        """The weight matrices the L2 penalty covers (see LossConfig.weight_decay)."""
        out = []
        for term in self.terms:
            out += [lin.weight for lin in term.linears] + [term.head.weight]
        if self.token_proj is not None:
            out.append(self.token_proj.weight)
        if self.attention is not None:
            out += [self.attention.in_proj_weight, self.attention.out_proj.weight]
        return out

    def gene_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, G, token_dim] per-gene input features before any attention."""
        if self.embedding is not None:
            return self.embedding.unsqueeze(0) * (1.0 - x).unsqueeze(-1)
        if self.token_proj is not None:
            return self.token_proj(x.unsqueeze(-1))
        return x.unsqueeze(-1)

    def forward(self, x: torch.Tensor, return_states: bool = False) -> DCellOutput:
        check_genotypes(x, self.sizes.num_genes)
        tokens = self.gene_tokens(x)  # [B, G, E]
        outs: list[torch.Tensor] = []
        heads: list[torch.Tensor] = []
        for t, term in enumerate(self.terms):
            parts = [outs[c] for c in self.sizes.children[t]]
            genes = self.sizes.direct_genes[t]
            if genes:
                tok = tokens[:, list(genes)]  # [B, g_t, E]
                if self.attention is not None:
                    tok = tok + self.attention(tok, tok, tok, need_weights=False)[0]
                parts.append(tok.reshape(x.shape[0], -1))  # gene-major: g0 e0..eE, g1 e0..
            h = torch.cat(parts, dim=1)
            for lin, norm in zip(term.linears, term.norms):
                h = lin(h)
                h = norm(self.act(h)) if self.cfg.norm_order == "act_norm" else self.act(norm(h))
            outs.append(h)
            heads.append(term.head(h))  # [B, 1]
        all_heads = torch.cat(heads, dim=1)  # [B, T]
        states = torch.cat(outs, dim=1) if return_states else None
        return DCellOutput(all_heads[:, -1], all_heads[:, :-1], states)
