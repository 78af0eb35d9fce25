"""Genotype data for DCell models: readers, simulator, cached datasets with splits, dense batches."""
from .batching import GenotypeBatcher, genotype_matrix
from .cache import GenotypeCacheError, cache_key, cache_path
from .config import GenotypeConfig, validate_config
from .csr import GenotypeDataError, csr_from_lists
from .dataset import GenotypeDataset, build_dataset, load_or_build_dataset
from .readers import GenotypeFileError, GenotypeTable, read_sga, read_table
from .simulate import FitnessModel, SimulatedGenotypes, simulate_genotypes
from .splits import split_rows

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
    "build_dataset",
    "cache_key",
    "cache_path",
    "csr_from_lists",
    "genotype_matrix",
    "load_or_build_dataset",
    "read_sga",
    "read_table",
    "simulate_genotypes",
    "split_rows",
    "validate_config",
]
