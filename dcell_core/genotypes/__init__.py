"""Genotype data for DCell models: readers, simulator, cached datasets with splits, dense batches."""
from .batching import GenotypeBatcher, genotype_matrix
from .cache import GenotypeCacheError, cache_key, cache_path
from .config import GenotypeConfig, validate_config
from .csr import GenotypeDataError, csr_from_lists
from .dataset import GenotypeDataset, build_dataset, load_or_build_dataset
from .kuzmin import read_kuzmin
from .readers import read_table
from .repeats import apply_repeats
from .sga import read_sga
from .simulate import FitnessModel, SimulatedGenotypes, simulate_genotypes
from .sources import genotype_genes, read_source
from .splits import split_rows
from .table import GenotypeFileError, GenotypeTable

__all__ = [
    "FitnessModel",
    "GenotypeBatcher",
    "GenotypeCacheError",
    "GenotypeConfig",
    "GenotypeDataError",
    "GenotypeDataset",
    "GenotypeFileError",
    "GenotypeTable",
    "SimulatedGenotypes",
    "apply_repeats",
    "build_dataset",
    "cache_key",
    "cache_path",
    "csr_from_lists",
    "genotype_genes",
    "genotype_matrix",
    "load_or_build_dataset",
    "read_kuzmin",
    "read_sga",
    "read_source",
    "read_table",
    "simulate_genotypes",
    "split_rows",
    "validate_config",
]
