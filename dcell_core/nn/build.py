"""Assemble a DCell model from a hierarchy and a ModelConfig."""
from __future__ import annotations

from torch import nn

from dcell_core.nn.common import term_sizes
from dcell_core.nn.config import ModelConfig
from dcell_core.nn.oracle import OracleDCell
from dcell_core.nn.stratum_dcell import StratumDCell
from dcell_core.ontology.hierarchy import Hierarchy


def build_dcell(hierarchy: Hierarchy, cfg: ModelConfig, fast: bool = True) -> nn.Module:
    """The stratum-parallel model (fast=True) or the per-term oracle (fast=False), freshly initialized.

    Both take a dense genotype batch x [B, n_genes] (1 = disrupted) and return DCellOutput(prediction [B],
    aux [B, T-1], states [B, sum L_t] or None); `forward(x, return_states=True)` fills `states`.
    """
    sizes = term_sizes(hierarchy, cfg)
    return StratumDCell(sizes, cfg) if fast else OracleDCell(sizes, cfg)
