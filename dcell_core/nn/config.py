"""Typed configuration of the DCell model and its loss (Hydra structured configs: unknown keys fail to compose).

Every choice that changes what the model computes is a field here with the paper's value (Ma et al., Nature
Methods 2018) as the default, so that it is logged with the resolved config. Fields hold only str / int / float
/ bool so that OmegaConf accepts the dataclasses as structured configs.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDTH_BASES = ("contained", "direct")
NORM_TYPES = ("batch", "layer", "none")
NORM_ORDERS = ("act_norm", "norm_act")
ACTIVATIONS = ("tanh", "gelu", "relu", "selu", "leaky_relu")
AUX_REDUCTIONS = ("sum", "mean")


@dataclass
class ModelConfig:
    # Genes that set a term's width: "contained" (paper: genes annotated to the term or any descendant) or
    # "direct" (only genes annotated to the term itself).
    width_basis: str = "contained"
    # Width floor: L_t = max(min_width, ceil(width_ratio x genes)); paper 20.
    min_width: int = 20
    # Neurons per gene in the width rule, rounded up (ceil); paper 0.3.
    width_ratio: float = 0.3
    # Normalization of each term's neurons: "batch" (paper; per neuron over the batch), "layer" (over the
    # term's L_t neurons per sample) or "none".
    norm_type: str = "batch"
    # "act_norm" (paper): O = Norm(Act(W I + b)); "norm_act": O = Act(Norm(W I + b)).
    norm_order: str = "act_norm"
    # Nonlinearity: "tanh" (paper), "gelu" (exact erf form), "relu", "selu", "leaky_relu" (slope 0.01).
    activation: str = "tanh"
    # Every linear weight and bias (term layers, heads, attention projections) starts uniform in
    # [-init_range, init_range]. Default 0.1: keeps pre-activations of fan-in ~100 near unit scale; the
    # experiments also used 0.001, which leaves pre-activations ~1e-3 (only the norm rescales them).
    # Norm gains start at 1 and norm shifts at 0; gene embeddings start uniform in [-1, 1].
    init_range: float = 0.1
    # Linear+Act+Norm layers per term: 1 (paper); k > 1 adds k-1 layers of width L_t -> L_t inside each term.
    subsystem_layers: int = 1
    # 0 (paper): a gene's input to the terms it is annotated to is its binary state (1 = disrupted).
    # d > 0: every gene has a learned d-vector, multiplied by (1 - state), i.e. zeroed where the gene is
    # disrupted; a term's gene input is the concatenation of its direct genes' vectors in gene index order
    # (d features per gene).
    learnable_embedding_dim: int = 0
    # 0: none. h > 0: before its linear layer, each term runs one residual multi-head self-attention layer over
    # the tokens of its direct genes, tokens <- tokens + MHA(tokens) (tokens attend only within the term;
    # the attention weights are shared by all terms). Tokens are the gene embeddings when
    # learnable_embedding_dim > 0, else the binary states projected by a shared Linear(1, attention_token_dim).
    # The token width must be divisible by h.
    num_attention_heads: int = 0
    # Token width of the binary-state projection used only when num_attention_heads > 0 and
    # learnable_embedding_dim == 0.
    attention_token_dim: int = 8
    # Speed only (never changes results): the stratum-parallel model groups the terms of a stratum into
    # shape buckets; a new bucket is opened when padding would cost more than this many multiply-adds per
    # sample. Larger = fewer, more padded buckets (fewer ops); smaller = tighter buckets.
    bucket_overhead: int = 20000
    # Speed only (never changes results beyond float rounding): with binary gene inputs (no embedding, no
    # attention) and genotypes that need no gradient, the first layer's gene columns are applied from the
    # nonzero genotype entries (a few disrupted genes per sample) instead of a dense matmul over all gene inputs.
    sparse_gene_inputs: bool = True

    def validate(self) -> None:
        """Raise one ValueError listing every invalid field with its value."""
        problems = _choice_problems(self, {"width_basis": WIDTH_BASES, "norm_type": NORM_TYPES,
                                           "norm_order": NORM_ORDERS, "activation": ACTIVATIONS})
        if self.min_width < 1:
            problems.append(f"min_width: must be >= 1, got {self.min_width}")
        if not self.width_ratio > 0:
            problems.append(f"width_ratio: must be > 0, got {self.width_ratio}")
        if not self.init_range > 0:
            problems.append(f"init_range: must be > 0, got {self.init_range}")
        if self.subsystem_layers < 1:
            problems.append(f"subsystem_layers: must be >= 1, got {self.subsystem_layers}")
        if self.learnable_embedding_dim < 0:
            problems.append(f"learnable_embedding_dim: must be >= 0, got {self.learnable_embedding_dim}")
        if self.num_attention_heads < 0:
            problems.append(f"num_attention_heads: must be >= 0, got {self.num_attention_heads}")
        if self.attention_token_dim < 1:
            problems.append(f"attention_token_dim: must be >= 1, got {self.attention_token_dim}")
        if self.num_attention_heads > 0 and self.token_dim % self.num_attention_heads:
            problems.append(f"num_attention_heads: token width {self.token_dim} is not divisible by "
                            f"{self.num_attention_heads} heads")
        if self.bucket_overhead < 0:
            problems.append(f"bucket_overhead: must be >= 0, got {self.bucket_overhead}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def token_dim(self) -> int:
        """Features per (term, gene) input: 1 (binary state), the embedding size, or the attention token width."""
        if self.learnable_embedding_dim > 0:
            return self.learnable_embedding_dim
        return self.attention_token_dim if self.num_attention_heads > 0 else 1


@dataclass
class LossConfig:
    # Weight of the auxiliary losses of the non-root terms; paper 0.3.
    alpha: float = 0.3
    # How the non-root terms' auxiliary MSEs are combined before alpha: "sum" (paper) or "mean" (over the
    # T-1 terms, i.e. an effective alpha of alpha / (T-1)).
    aux_reduction: str = "sum"
    # lambda of the explicit L2 penalty lambda x ||W||^2 over weight matrices only (term layers, heads,
    # attention projections); biases, norm gains/shifts and gene embeddings are not penalized. The paper's text
    # gives no value we could verify; 0 = off.
    weight_decay: float = 0.0

    def validate(self) -> None:
        problems = _choice_problems(self, {"aux_reduction": AUX_REDUCTIONS})
        if not self.alpha >= 0:
            problems.append(f"alpha: must be >= 0, got {self.alpha}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if problems:
            raise ValueError("invalid loss config: " + "; ".join(problems))


def _choice_problems(cfg, choices: dict[str, tuple[str, ...]]) -> list[str]:
    return [f"{name}: {getattr(cfg, name)!r} not in {list(allowed)}" for name, allowed in choices.items()
            if getattr(cfg, name) not in allowed]
