"""The production checkpoint: a self-describing directory that rebuilds exactly one trained DCell.

Layout (every file but checkpoint.json is listed in checkpoint.json with its SHA-256):

    checkpoint.json    format, hierarchy fingerprint, source run, metric, file hashes
    model.safetensors  the weights (safetensors: plain tensors, nothing executable)
    config.yaml        the resolved training config (model settings rebuild the network)
    hierarchy.json     the Hierarchy: term ids and names, children, genes (the gene and term index), provenance
    metrics.json       the source run's final metrics and per-epoch history
    model_card.md      what was searched, the winner's parameters and metric, the plots
    plots/*.png

Loading never unpickles: weights come from safetensors, everything else is JSON or YAML (safe loader). A
checkpoint is refused when a file's hash differs from its manifest, when its hierarchy fingerprint differs from
the data it is asked to run on, or when a tensor's shape or dtype differs from the rebuilt model's (nothing is
padded, truncated or cast).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcell_core.fileio import file_sha256
from dcell_core.ontology.hierarchy import Hierarchy, HierarchyError

# 2: gene columns stored unpadded per stratum, batch-norm statistics per stratum (StratumDCell state-dict layout)
FORMAT, FORMAT_VERSION = "dcell-checkpoint", 2
INFO, WEIGHTS, CONFIG, HIERARCHY, METRICS, CARD = ("checkpoint.json", "model.safetensors", "config.yaml",
                                                  "hierarchy.json", "metrics.json", "model_card.md")
PLOTS = "plots"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is; the message names the checkpoint, the file and the value."""


class FingerprintMismatch(CheckpointError):
    """The checkpoint was trained on another hierarchy than the data it is asked to run on."""


@dataclass(frozen=True)
class DCellCheckpoint:
    """A loaded production checkpoint: the model in eval mode on `device`, and what describes it."""
    path: Path
    model: torch.nn.Module = field(repr=False)
    hierarchy: Hierarchy = field(repr=False)
    config: DictConfig = field(repr=False)
    info: dict  # checkpoint.json
    metrics: dict = field(repr=False)  # metrics.json

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    def encode(self, genotypes: Sequence[Sequence[str]]) -> torch.Tensor:
        from dcell_core.serving.inference import encode_genotypes

        return encode_genotypes(genotypes, self.hierarchy)

    def predict(self, genotypes: Sequence[Sequence[str]], batch_size: int = 1024) -> np.ndarray:
        """Predicted phenotype [N] of genotypes given as gene-name lists (an unknown gene is an error)."""
        from dcell_core.serving.inference import predict

        return predict(self.model, self.encode(genotypes), batch_size)


def write_checkpoint(directory: Path, *, weights: dict[str, torch.Tensor], config: DictConfig, hierarchy: Hierarchy,
                     metrics: dict, source: dict, metric: dict, card: str, plots: Sequence[Path] = ()) -> dict:
    """Write a checkpoint into the existing empty `directory` (a staging directory: syncing and placing it
    atomically is the caller's job, see install.py). Returns checkpoint.json's content."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if any(directory.iterdir()):
        raise FileExistsError(f"checkpoint staging directory {directory} is not empty")
    fp = hierarchy.fingerprint
    if not fp:
        raise CheckpointError("the hierarchy has no fingerprint in its provenance: a checkpoint must name its data")
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    # one metadata key: safetensors writes several in random order, and the file's hash identifies the weights
    save_file(tensors, str(directory / WEIGHTS), metadata={"dcell": json.dumps({"format": FORMAT, "fingerprint": fp})})
    (directory / CONFIG).write_text(OmegaConf.to_yaml(config))
    (directory / HIERARCHY).write_text(hierarchy.to_json())
    (directory / METRICS).write_text(json.dumps(metrics, indent=1, allow_nan=True))
    (directory / CARD).write_text(card)
    if plots:
        (directory / PLOTS).mkdir()
        for p in plots:
            (directory / PLOTS / p.name).write_bytes(Path(p).read_bytes())
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": fp, "data": str(config.data.name), "root": hierarchy.terms[hierarchy.root],
        "terms": hierarchy.num_terms, "genes": hierarchy.num_genes,
        "source": source, "metric": metric,
        "files": {name: file_sha256(directory / name) for name in files},
    }
    (directory / INFO).write_text(json.dumps(info, indent=1))
    return info


def read_info(path: Path) -> dict:
    """checkpoint.json of a checkpoint directory, checked for format and version (files not verified)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory")
    info_path = path / INFO
    if not info_path.is_file():
        raise CheckpointError(f"checkpoint {path}: no {INFO} (not a production checkpoint; training checkpoints "
                              "are promoted with python -m platform.promote)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: {INFO} is not valid JSON ({e})") from e
    found = info.get("format") if isinstance(info, dict) else info
    if found != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {INFO} has format {found!r}, expected {FORMAT!r}")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {info.get('format_version')!r}, this code reads "
                              f"{FORMAT_VERSION}")
    missing = [k for k in ("fingerprint", "source", "metric", "files") if k not in info]
    if missing or not isinstance(info["files"], dict):
        raise CheckpointError(f"checkpoint {path}: {INFO} lacks {missing or ['a files mapping']}")
    return info


def verify_files(path: Path, info: dict) -> None:
    """Every file of the manifest is present with its recorded SHA-256."""
    for name in (WEIGHTS, CONFIG, HIERARCHY, METRICS):
        if name not in info["files"]:
            raise CheckpointError(f"checkpoint {path}: {INFO} lists no {name}")
    for name, digest in info["files"].items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"checkpoint {path}: {INFO} lists a file outside the checkpoint: {name!r}")
        f = Path(path) / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        found = file_sha256(f)
        if found != digest:
            raise CheckpointError(f"checkpoint {path}: {name} has SHA-256 {found}, {INFO} records {digest} "
                                  "(changed or corrupted after it was written)")


def load_checkpoint(path: str | Path, *, hierarchy: Hierarchy | None = None, fingerprint: str | None = None,
                    device: str | torch.device = "cpu") -> DCellCheckpoint:
    """Rebuild the trained model of a production checkpoint directory.

    `hierarchy` (or `fingerprint`): the data the model is to run on; a checkpoint trained on another hierarchy
    is refused with FingerprintMismatch. Weights are read from safetensors only, and every tensor must have the
    shape and dtype of the rebuilt model's.
    """
    path = Path(path)
    info = read_info(path)
    verify_files(path, info)
    stored = _read_hierarchy(path, info)
    _check_data(path, stored, hierarchy, fingerprint)
    config = OmegaConf.load(path / CONFIG)
    model = _build_model(path, stored, config)
    weights = read_weights(path / WEIGHTS, expect_fingerprint=info["fingerprint"])
    check_state_dict(model, weights, where=f"checkpoint {path}")
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    metrics = json.loads((path / METRICS).read_text())
    return DCellCheckpoint(path, model, stored, config, info, metrics)


def read_weights(path: Path, expect_fingerprint: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a pickle (torch.save) or any other content is refused, never loaded."""
    from safetensors import SafetensorError, safe_open

    with open(path, "rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path} is a pickle / torch.save archive, not safetensors: refused (loading it "
                              "could run code)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e
    if expect_fingerprint is not None:
        try:
            found = json.loads(meta["dcell"])["fingerprint"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: no dcell fingerprint in the safetensors metadata {meta}") from e
        if found != expect_fingerprint:
            raise CheckpointError(f"{path}: weights carry hierarchy fingerprint {found!r}, the checkpoint says "
                                  f"{expect_fingerprint!r}")
    return tensors


def check_state_dict(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Same keys, shapes and dtypes as the model's state dict, or one error listing the differences."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    for k, v in expected.items():
        if k in weights and (tuple(weights[k].shape), weights[k].dtype) != (tuple(v.shape), v.dtype):
            problems.append(f"{k}: {tuple(weights[k].shape)} {weights[k].dtype} in the weights, "
                            f"{tuple(v.shape)} {v.dtype} in the model")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{where}: the weights do not fit the model its config and hierarchy build "
                              f"({len(problems)} differences): {shown}")


def model_config(config: DictConfig, where: str):
    """The typed, validated ModelConfig of a resolved config (unknown or mistyped keys are errors)."""
    from omegaconf.errors import OmegaConfBaseException

    from dcell_core.nn import ModelConfig

    if "model" not in config:
        raise CheckpointError(f"{where}: the config has no 'model' section")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), config.model))
        cfg.validate()
    except (OmegaConfBaseException, ValueError) as e:
        raise CheckpointError(f"{where}: bad model config: {e}") from e
    return cfg


def _build_model(path: Path, hierarchy: Hierarchy, config: DictConfig) -> torch.nn.Module:
    from dcell_core.nn import build_dcell

    return build_dcell(hierarchy, model_config(config, f"checkpoint {path} ({CONFIG})"))


def _read_hierarchy(path: Path, info: dict) -> Hierarchy:
    try:
        h = Hierarchy.from_json((path / HIERARCHY).read_text())
    except (json.JSONDecodeError, KeyError, TypeError, HierarchyError) as e:
        raise CheckpointError(f"checkpoint {path}: {HIERARCHY} is not a valid hierarchy ({e})") from e
    if h.fingerprint != info["fingerprint"]:
        raise CheckpointError(f"checkpoint {path}: {HIERARCHY} has fingerprint {h.fingerprint!r}, {INFO} says "
                              f"{info['fingerprint']!r}")
    return h


def _check_data(path: Path, stored: Hierarchy, hierarchy: Hierarchy | None, fingerprint: str | None) -> None:
    wanted = [("the given fingerprint", fingerprint)] if fingerprint is not None else []
    if hierarchy is not None:
        wanted.append((f"the data's hierarchy ({hierarchy.num_terms} terms, {hierarchy.num_genes} genes)",
                       hierarchy.fingerprint))
    for label, fp in wanted:
        if fp != stored.fingerprint:
            raise FingerprintMismatch(
                f"checkpoint {path} was trained on hierarchy {stored.fingerprint} ({stored.num_terms} terms, "
                f"{stored.num_genes} genes, root {stored.terms[stored.root]}); {label} has fingerprint {fp}: "
                "its genes and terms do not mean the same inputs and neurons")
    if hierarchy is not None and (hierarchy.genes != stored.genes or hierarchy.terms != stored.terms):
        raise FingerprintMismatch(f"checkpoint {path}: the data's hierarchy has fingerprint {hierarchy.fingerprint} "
                                  "but other genes or terms than the checkpoint's")

