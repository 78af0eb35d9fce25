"""The data of one run: its hierarchy and genotype dataset, from one composed config."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from dcell_core.config import cache_dir, ontology_config
from dcell_core.genotypes import GenotypeConfig, GenotypeDataset, load_or_build_dataset, read_sga, read_table
from dcell_core.genotypes.dataset import resolve_path
from dcell_core.ontology import Hierarchy, load_hierarchy


@dataclass(frozen=True)
class RunData:
    hierarchy: Hierarchy
    dataset: GenotypeDataset


def dataset_genes(gcfg: GenotypeConfig, base_dir: str | None) -> frozenset[str]:
    """Every gene disrupted in a genotype file (for containment counted over the dataset's genes)."""
    if gcfg.source == "simulate":
        raise ValueError("data.ontology.containment_genes=dataset needs a genotype file (data.genotypes.source "
                         "sga or table); simulated genotypes are drawn from the hierarchy itself")
    path = resolve_path(gcfg.path, base_dir)
    if gcfg.source == "sga":
        table = read_sga(path, None, gcfg.phenotype, drop_missing=gcfg.drop_missing)
    else:
        table = read_table(path, gcfg.phenotype, None, gcfg.genes_column, gcfg.gene_separator,
                           drop_missing=gcfg.drop_missing)
    return frozenset(g for genes in table.frame["genes"] for g in genes)


def load_run_data(cfg: DictConfig) -> RunData:
    """Hierarchy (cached by fingerprint) and dataset (cached by hierarchy, source and splits) of a config."""
    onto = ontology_config(cfg)
    gcfg: GenotypeConfig = OmegaConf.to_object(cfg.data.genotypes)
    universe = dataset_genes(gcfg, cfg.base_dir) if onto.containment_genes == "dataset" else None
    hierarchy = load_hierarchy(onto, cache_dir(cfg), cfg.base_dir, gene_universe=universe)
    dataset = load_or_build_dataset(hierarchy, gcfg, cache_dir(cfg), cfg.base_dir)
    return RunData(hierarchy, dataset)
