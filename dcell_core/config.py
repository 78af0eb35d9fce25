"""The Hydra config tree (data / model / loss / train groups under dcell_core/conf) and its typed schema.

The schema dataclasses are registered in Hydra's ConfigStore, so composing with a mistyped or unknown key fails
(struct mode), and `compose()` returns one resolved DictConfig: what gets logged, checkpointed and promoted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dcell_core.genotypes.config import GenotypeConfig
from dcell_core.nn.config import LossConfig, ModelConfig
from dcell_core.ontology.config import OntologyConfig
from dcell_core.train.config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class DataConfig:
    name: str = "yeast_dna_repair"  # the data config's name, logged with every run
    description: str = ""  # one line on what this data is
    ontology: OntologyConfig = field(default_factory=OntologyConfig)
    genotypes: GenotypeConfig = field(default_factory=GenotypeConfig)


@dataclass
class DCellConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Built hierarchies and datasets are cached here under their fingerprints.
    cache_dir: str = "${oc.env:DCELL_CACHE_DIR,'~/.cache/dcell'}"
    # Relative data paths in the config are resolved against this directory (null = the working directory).
    base_dir: Optional[str] = None


def register_configs() -> None:
    ConfigStore.instance().store(name="dcell_schema", node=DCellConfig)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config tree with Hydra overrides and resolve every interpolation."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def ontology_config(cfg: DictConfig) -> OntologyConfig:
    """The typed OntologyConfig of a composed config (validated)."""
    onto = OmegaConf.to_object(cfg.data.ontology)
    onto.validate()
    return onto


def cache_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.cache_dir)).expanduser().resolve()
