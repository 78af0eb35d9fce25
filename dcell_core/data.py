"""The data of one run: its hierarchy and genotype dataset, from one composed config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dcell_core.config import cache_dir, ontology_config
from dcell_core.genotypes import GenotypeConfig, GenotypeDataset, genotype_genes, load_or_build_dataset
from dcell_core.ontology import Hierarchy, load_hierarchy


@dataclass(frozen=True)
class RunData:
    hierarchy: Hierarchy
    dataset: GenotypeDataset


def dataset_genes(gcfg: GenotypeConfig, base_dir: str | None, cache: str | Path | None = None) -> frozenset[str]:
    """Every gene disrupted in at least one genotype the configured file source keeps
    (data.ontology.gene_universe=dataset), read by the genotype readers with the data config's own settings;
    cached under `cache` when given (genotypes.genotype_genes)."""
    if gcfg.source == "simulate":
        raise ValueError("data.ontology.gene_universe=dataset needs genotypes read from a file (data.genotypes.source "
                         "and data.genotypes.path), but data.genotypes.source=simulate: the simulator draws its "
                         "genotypes from the hierarchy's genes, so they cannot define them. Set a genotype file, or "
                         "data.ontology.gene_universe=annotated or =FILE (a text file of ORFs, one per line)")
    return genotype_genes(gcfg, base_dir, cache)


def load_run_hierarchy(cfg: DictConfig, cache: str | Path | None) -> Hierarchy:
    """The hierarchy of a composed config, through the hierarchy cache in `cache` (None: built, not cached);
    with data.ontology.gene_universe=dataset, over the genes of its genotype data."""
    onto = ontology_config(cfg)
    genes = None
    if onto.gene_universe == "dataset":
        genes = dataset_genes(OmegaConf.to_object(cfg.data.genotypes), cfg.base_dir, cache)
    return load_hierarchy(onto, cache, cfg.base_dir, dataset_genes=genes)


def load_run_data(cfg: DictConfig) -> RunData:
    """Hierarchy (cached by fingerprint) and dataset (cached by hierarchy, source and splits) of a config."""
    gcfg: GenotypeConfig = OmegaConf.to_object(cfg.data.genotypes)
    hierarchy = load_run_hierarchy(cfg, cache_dir(cfg))
    dataset = load_or_build_dataset(hierarchy, gcfg, cache_dir(cfg), cfg.base_dir)
    return RunData(hierarchy, dataset)
