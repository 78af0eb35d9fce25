"""Predictions and subsystem changes of a trained DCell for genotypes given by gene names.

A genotype is a list of disrupted genes; it becomes one row of the dense [B, n_genes] 0/1 batch the model
takes (paper coding: 1 = disrupted). The interpretable part of DCell: every term's neurons are a subsystem's
state, so the subsystems a genotype changes most are the terms whose state vector moves farthest (Euclidean
norm) from the wild type's (no gene disrupted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dcell_core.ontology.hierarchy import Hierarchy


class PredictInputError(ValueError):
    """Genotypes or prediction settings that cannot be used as given (a gene list, an input or output file, a
    count); the message names the value, and the file and line when there is one. The prediction CLI reports
    exactly these (and the checkpoint's own errors) as usage errors: any other ValueError is a bug and keeps its
    traceback."""


class UnknownGenesError(PredictInputError):
    """Genotypes name genes the model has no input for; the message lists them."""

    def __init__(self, unknown: dict[str, str], source: str = "genotypes") -> None:
        self.unknown = unknown  # gene -> where it first occurs ("genotype 3", "line 5")
        shown = ", ".join(f"{g} ({where})" for g, where in list(unknown.items())[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        super().__init__(f"{source}: {len(unknown)} gene(s) not in the model's hierarchy: {shown}{more} "
                         "(--skip-unknown leaves those genotypes without a prediction)")


@dataclass(frozen=True)
class Subsystem:
    term: str  # GO id
    name: str
    change: float  # norm of the term's state change against the wild type


def unknown_genes(genotypes: Sequence[Sequence[str]], hierarchy: Hierarchy) -> list[list[str]]:
    """Per genotype, the names it lists that are not genes of the hierarchy (in its order)."""
    index = hierarchy.gene_index
    return [[g for g in genes if g not in index] for genes in genotypes]


def first_unknown(genotypes: Sequence[Sequence[str]], hierarchy: Hierarchy,
                  labels: Sequence[str] | None = None) -> dict[str, str]:
    """Unknown gene -> label of the first genotype naming it (labels default to 'genotype N')."""
    out: dict[str, str] = {}
    for b, names in enumerate(unknown_genes(genotypes, hierarchy)):
        for g in names:
            out.setdefault(g, labels[b] if labels is not None else f"genotype {b + 1}")
    return out


def encode_genotypes(genotypes: Sequence[Sequence[str]], hierarchy: Hierarchy) -> torch.Tensor:
    """Dense float32 [B, n_genes], 1 where a genotype disrupts the gene; an unknown gene is an error."""
    unknown = first_unknown(genotypes, hierarchy)
    if unknown:
        raise UnknownGenesError(unknown)
    index = hierarchy.gene_index
    rows, cols = [], []
    for b, genes in enumerate(genotypes):
        if len(set(genes)) != len(genes):
            raise PredictInputError(f"genotype {b + 1} lists a gene twice: {'+'.join(genes)}")
        rows += [b] * len(genes)
        cols += [index[g] for g in genes]
    x = torch.zeros(len(genotypes), hierarchy.num_genes, dtype=torch.float32)
    x[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0
    return x


def _batches(x: torch.Tensor, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Root predictions [B] (float32) of a dense genotype batch, in eval mode."""
    model.eval()
    device = _device(model)
    out = [model(chunk.to(device)).prediction.float().cpu() for chunk in _batches(x, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def term_of_column(model: torch.nn.Module) -> torch.Tensor:
    """[sum L_t] term index of each state column (states are term-major, in term index order)."""
    widths = torch.tensor(model.sizes.widths, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(widths)), widths)


@torch.no_grad()
def subsystem_changes(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """[B, T] Euclidean norm of each term's state change against the wild type (no gene disrupted)."""
    model.eval()
    device = _device(model)
    wild = model(torch.zeros(1, x.shape[1], device=device), return_states=True).states  # [1, sum L]
    columns = term_of_column(model).to(device)
    out = []
    for chunk in _batches(x, batch_size):
        diff = model(chunk.to(device), return_states=True).states - wild  # [b, sum L]
        sq = torch.zeros(len(chunk), model.sizes.num_terms, device=device, dtype=diff.dtype)
        out.append(sq.index_add_(1, columns, diff * diff).sqrt().cpu())  # [b, T]
    return torch.cat(out) if out else torch.zeros(0, model.sizes.num_terms)


def top_subsystems(changes: torch.Tensor, hierarchy: Hierarchy, k: int) -> list[list[Subsystem]]:
    """The k terms with the largest change per genotype, largest first (ties: lower term index first)."""
    if k < 1:
        raise ValueError(f"number of subsystems must be >= 1, got {k}")
    k = min(k, changes.shape[1])
    # stable sort on the negated change keeps term index order among equal changes
    order = torch.sort(-changes, dim=1, stable=True).indices[:, :k]
    return [[Subsystem(hierarchy.terms[t], hierarchy.names[t], float(changes[b, t])) for t in row.tolist()]
            for b, row in enumerate(order)]
