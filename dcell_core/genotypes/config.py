"""Typed configuration of the genotype data source (a Hydra structured config, `data` group).

Every knob that changes the data a model sees is a field here, so that it is logged with the resolved config
and enters the dataset cache key (`dataset.describe_source`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

SOURCES = ("simulate", "sga", "table", "kuzmin")
FILE_SOURCES = ("sga", "table", "kuzmin")
MULTI_FILE_SOURCES = ("sga", "kuzmin")  # sources whose `path` may list several files
ALLELE_CLASSES = ("deletion", "damp", "other")  # sga.allele_class; the order is the stored class code
REPEAT_POLICIES = ("keep", "mean")
DEFAULT_NEUTRAL_GENES = ("YDL227C",)  # HO: the hoΔ marker in every Kuzmin query strain
SIMULATORS = ("modules", "hierarchy_aligned")
# Settings that belong to one simulator: setting one under the other simulator is an error, not ignored.
SIMULATOR_FIELDS = {
    "modules": ("module_max_genes", "truth_drop", "truth_move", "truth_novel", "essential_fraction",
                "essential_max_fitness", "gene_cost_scale", "gene_cost_shape", "complex_fraction", "complex_cost",
                "pathway_min_share", "max_pathways_per_gene",
                "redundant_fraction", "redundant_cost", "buffer_pairs", "buffer_cost", "buffer_sibling_bias"),
    "hierarchy_aligned": ("threshold", "hill", "weight_scale"),
}
SHARED_SIMULATOR_FIELDS = ("simulator", "num_singles", "num_doubles", "num_triples", "related_fraction",
                           "noise_std", "noise_slope", "seed")


@dataclass
class GenotypeConfig:
    # Where genotypes come from: "simulate" (simulate.py), "sga" (Costanzo 2016 pair-wise release files),
    # "kuzmin" (Kuzmin 2018 / 2020 digenic and trigenic release tables) or "table" (generic CSV / TSV / Parquet
    # with a gene-list column).
    source: str = "simulate"
    # File for "sga" / "kuzmin" / "table"; "sga" and "kuzmin" also take a list of files (read in order, e.g. the
    # four Costanzo 2016 files). Relative paths are resolved against the caller's base_dir. Unused by "simulate".
    path: Any = None
    # Where the files of this data config are published (shown when a file is missing); documentation only,
    # it does not change the data and stays out of the cache key.
    release: str = ""
    # Phenotype to predict. sga: "fitness" (= double mutant fitness, "dmf"), "epsilon", "dmf", "smf_query",
    # "smf_array", "dmf_std", "pvalue"; kuzmin: "fitness" (double / triple mutant fitness), "epsilon_raw",
    # "epsilon_adjusted" (epsilon of digenic, tau of trigenic rows), "pvalue", "query_fitness", "array_fitness",
    # "fitness_std"; table: a numeric column name; simulate: "fitness".
    phenotype: str = "fitness"
    # table: the column holding the perturbed ORFs of a row, joined by `gene_separator` ("YAL001C+YBR002W").
    genes_column: str = "genes"
    gene_separator: str = "+"
    # Drop rows naming genes absent from the hierarchy (counted in the dataset stats) instead of failing.
    drop_unknown: bool = False
    # Drop rows whose phenotype cell is empty / NA (counted in the stats) instead of failing.
    drop_missing: bool = False
    # Rows measuring the same gene set (reciprocal crosses, several alleles, both temperatures): "keep" every
    # row (copies always share a split), or "mean": one row per gene set, phenotypes averaged, the number of
    # measurements recorded per row. Either way the stats count the repeated gene sets and those whose rows mix
    # allele classes or temperatures (the model sees genes only, not alleles or temperatures).
    repeats: str = "keep"

    # ---- sga (Costanzo 2016) -------------------------------------------------------------------------------
    # Allele classes to keep (a row is kept when every strain in it is of a kept class): "deletion", "damp",
    # "other" (temperature-sensitive and other alleles); rule in sga.allele_class and docs/genotypes.md.
    alleles: List[str] = field(default_factory=lambda: list(ALLELE_CLASSES))
    # Screen temperatures to keep (degrees C, from the Arraytype/Temp column: 26 or 30); null = every temperature.
    temperatures: Optional[List[int]] = None
    # Add one single-mutant row per (strain, temperature) from the SMF columns (fitness only).
    singles: bool = False

    # ---- kuzmin (Kuzmin 2018 / 2020) -------------------------------------------------------------------------
    # Marker genes removed from every genotype (the hoΔ in each query strain): digenic rows become 2-gene and
    # trigenic rows 3-gene genotypes.
    neutral_genes: List[str] = field(default_factory=lambda: list(DEFAULT_NEUTRAL_GENES))
    # Values of "Combined mutant type" to keep ("digenic", "trigenic"); null = every row.
    mutant_types: Optional[List[str]] = None

    # ---- simulator (source == "simulate"); models, equations and defaults in docs/genotypes.md ---------------
    # "modules" (truth.py: a hidden biology the hierarchy only partly shows, calibrated to the Costanzo 2016
    # interaction statistics) or "hierarchy_aligned" (simulate.py: fitness built on the model's own terms).
    simulator: str = "modules"
    num_singles: int = -1  # single deletions; -1 = one per gene, else a sample of that many genes
    num_doubles: int = 10000  # distinct double deletions (defaults fit the 288-gene DNA repair hierarchy)
    num_triples: int = 5000  # distinct triple deletions
    related_fraction: float = 0.0  # share of doubles / triples drawn inside one hierarchy term (0: genome-wide)
    noise_std: float = 0.03  # measurement noise sd at fitness 1
    noise_slope: float = 0.05  # noise sd grows by this much as fitness falls to 0: sd = noise_std + slope (1 - F)
    seed: int = 0  # simulator seed (the truth, sampled genotypes, noise: separate streams)
    # "modules" only (truth.py)
    module_max_genes: int = 60  # GO terms of 2 .. this many genes become modules of the truth
    truth_drop: float = 0.1  # share of gene-to-module memberships dropped
    truth_move: float = 0.1  # share moved to another random module
    truth_novel: float = 0.2  # modules matching no GO term, as a share of the GO modules
    essential_fraction: float = 0.17  # near-lethal genes (yeast: about 1,100 essential of 6,000)
    essential_max_fitness: float = 0.2  # their single-deletion fitness is uniform in [0.01, this]
    gene_cost_scale: float = 0.02  # other genes: cost c_g = scale x Lomax(shape), a heavy tail
    gene_cost_shape: float = 1.5
    complex_fraction: float = 0.4  # modules that fail once (positive interactions inside)
    complex_cost: float = 0.3  # their cost L_m = complex_cost x Exp(1)
    max_pathways_per_gene: int = 2  # a gene's loss counts in at most this many of its pathways
    pathway_min_share: float = 0.6  # a member's loss removes a share p ~ U(this, 1) of its pathway
    redundant_fraction: float = 0.3  # modules whose members buffer each other (negative inside)
    redundant_cost: float = 0.25  # B_m = redundant_cost x Exp(1), paid from the second hit on
    buffer_pairs: float = 1.5  # pairs of modules that buffer each other, per module (negative between)
    buffer_cost: float = 0.25  # C = buffer_cost x Exp(1), paid when both modules are hit
    buffer_sibling_bias: float = 0.8  # chance a module's buffering partner is a GO sibling
    # "hierarchy_aligned" only (simulate.py)
    threshold: float = 0.25  # fraction of a term's contained genes hit at which the term is half failed
    hill: float = 4.0  # steepness of the term failure curve (> 1 = buffering, hits interact)
    weight_scale: float = 0.5  # mean fitness cost of a fully failed term (term weights ~ scale * Exp(1))

    # ---- splits (all sources); rows with the same gene set always share a split --------------------------
    val_fraction: float = 0.1  # share of rows in the validation split
    test_fraction: float = 0.1  # share of rows in the test split
    split_seed: int = 0  # seed of the group shuffle that deals rows to splits

    def validate(self) -> None:
        """Raise one ValueError listing every invalid field with its value (see validate_config)."""
        validate_config(self)

    def paths(self) -> list[str]:
        """The configured file(s) as a list (empty for none)."""
        if self.path is None or self.path == "":
            return []
        return [self.path] if isinstance(self.path, str) else [str(p) for p in self.path]


def validate_config(cfg: GenotypeConfig) -> None:
    """Raise one ValueError listing every field whose value cannot work, with the value found."""
    problems = []
    if cfg.source not in SOURCES:
        problems.append(f"source: {cfg.source!r} not in {list(SOURCES)}")
    problems += _path_problems(cfg)
    if cfg.source == "simulate" and cfg.phenotype != "fitness":
        problems.append(f"phenotype: the simulator produces 'fitness' only, got {cfg.phenotype!r}")
    if not cfg.gene_separator:
        problems.append("gene_separator: must be a non-empty string")
    if cfg.repeats not in REPEAT_POLICIES:
        problems.append(f"repeats: {cfg.repeats!r} not in {list(REPEAT_POLICIES)}")
    elif cfg.source == "simulate" and cfg.repeats != "keep":
        problems.append(f"repeats: {cfg.repeats!r} applies to genotype files; the simulator draws distinct "
                        "genotypes (use keep)")
    problems += _sga_problems(cfg) + _kuzmin_problems(cfg)
    problems += [f"{n}: must be >= 0, got {getattr(cfg, n)}" for n in (
        "num_doubles", "num_triples", "weight_scale", "noise_std", "noise_slope", "gene_cost_scale", "complex_cost",
        "redundant_cost", "buffer_pairs", "buffer_cost") if getattr(cfg, n) < 0]
    if cfg.num_singles < -1:
        problems.append(f"num_singles: must be -1 (every gene) or >= 0, got {cfg.num_singles}")
    problems += [f"{n}: must lie in [0, 1], got {getattr(cfg, n)}" for n in (
        "related_fraction", "val_fraction", "test_fraction", "truth_drop", "truth_move", "essential_fraction",
        "complex_fraction", "redundant_fraction", "buffer_sibling_bias", "pathway_min_share") if not 0.0 <= getattr(cfg, n) <= 1.0]
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        problems.append(f"val_fraction + test_fraction: must be < 1 to leave training data, got "
                        f"{cfg.val_fraction} + {cfg.test_fraction}")
    problems += _simulator_problems(cfg)
    if problems:
        raise ValueError("invalid genotype config: " + "; ".join(problems))


def _simulator_problems(cfg: GenotypeConfig) -> list[str]:
    problems = []
    if cfg.simulator not in SIMULATORS:
        return [f"simulator: {cfg.simulator!r} not in {list(SIMULATORS)}"]
    defaults = GenotypeConfig()
    for other, names in SIMULATOR_FIELDS.items():
        if other != cfg.simulator:
            problems += [f"{n}: applies to simulator {other!r} only, not {cfg.simulator!r}" for n in names
                         if getattr(cfg, n) != getattr(defaults, n)]
    if not 0.0 < cfg.threshold <= 1.0:
        problems.append(f"threshold: must lie in (0, 1], got {cfg.threshold}")
    if cfg.hill <= 0:
        problems.append(f"hill: must be > 0, got {cfg.hill}")
    if cfg.module_max_genes < 2:
        problems.append(f"module_max_genes: must be >= 2, got {cfg.module_max_genes}")
    if cfg.truth_drop + cfg.truth_move > 1.0:
        problems.append(f"truth_drop + truth_move: must be <= 1, got {cfg.truth_drop} + {cfg.truth_move}")
    if cfg.truth_novel < 0:
        problems.append(f"truth_novel: must be >= 0, got {cfg.truth_novel}")
    if cfg.complex_fraction + cfg.redundant_fraction > 1.0:
        problems.append(f"complex_fraction + redundant_fraction: must be <= 1, got {cfg.complex_fraction} + "
                        f"{cfg.redundant_fraction}")
    if not 0.01 < cfg.essential_max_fitness <= 1.0:
        problems.append(f"essential_max_fitness: must lie in (0.01, 1], got {cfg.essential_max_fitness}")
    if cfg.max_pathways_per_gene < 1:
        problems.append(f"max_pathways_per_gene: must be >= 1, got {cfg.max_pathways_per_gene}")
    if cfg.gene_cost_shape <= 0:
        problems.append(f"gene_cost_shape: must be > 0, got {cfg.gene_cost_shape}")
    return problems


def _path_problems(cfg: GenotypeConfig) -> list[str]:
    path = cfg.path
    if path is not None and not isinstance(path, str) and not (
            isinstance(path, (list, tuple)) and all(isinstance(p, str) for p in path)):
        return [f"path: expected a file name or a list of file names, got {path!r}"]
    if cfg.source in FILE_SOURCES and (not cfg.paths() or any(not p.strip() for p in cfg.paths())):
        return [f"path: source {cfg.source!r} needs a file, got {path!r}"]
    if cfg.source in FILE_SOURCES and cfg.source not in MULTI_FILE_SOURCES and not isinstance(path, str):
        return [f"path: source {cfg.source!r} reads one file, got the list {list(path)}"]
    return []


def _sga_problems(cfg: GenotypeConfig) -> list[str]:
    problems = []
    bad = [a for a in cfg.alleles if a not in ALLELE_CLASSES]
    if bad or not cfg.alleles:
        problems.append(f"alleles: {list(cfg.alleles)} must be a non-empty subset of {list(ALLELE_CLASSES)}")
    if cfg.temperatures is not None and not cfg.temperatures:
        problems.append("temperatures: an empty list keeps nothing; use null for every temperature")
    if cfg.source != "sga":
        changed = [n for n, v in (("alleles", sorted(cfg.alleles) != sorted(ALLELE_CLASSES)),
                                  ("temperatures", cfg.temperatures is not None), ("singles", cfg.singles)) if v]
        problems += [f"{n}: applies to source 'sga' only, not {cfg.source!r}" for n in changed]
    elif cfg.singles and cfg.phenotype not in ("fitness", "dmf"):
        problems.append(f"singles: single-mutant rows carry fitness only; phenotype {cfg.phenotype!r} would be "
                        "missing in them (use phenotype fitness or singles false)")
    return problems


def _kuzmin_problems(cfg: GenotypeConfig) -> list[str]:
    problems = []
    if any(not str(g).strip() for g in cfg.neutral_genes):
        problems.append(f"neutral_genes: empty gene name in {list(cfg.neutral_genes)}")
    if cfg.mutant_types is not None and (not cfg.mutant_types or any(not str(t).strip() for t in cfg.mutant_types)):
        problems.append(f"mutant_types: {list(cfg.mutant_types)} must be null (every row) or non-empty names")
    if cfg.source != "kuzmin":
        changed = [n for n, v in (("neutral_genes", list(cfg.neutral_genes) != list(DEFAULT_NEUTRAL_GENES)),
                                  ("mutant_types", cfg.mutant_types is not None)) if v]
        problems += [f"{n}: applies to source 'kuzmin' only, not {cfg.source!r}" for n in changed]
    return problems
