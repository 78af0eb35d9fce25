"""Training checkpoints: weights in safetensors, optimizer/scheduler state loaded weights-only, the resolved config.

A checkpoint is a directory `epoch_NNNN/` written as a temporary directory and renamed into place, so a crash
never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from dcell_core.fileio import atomic_directory

WEIGHTS, STATE, CONFIG, META = "model.safetensors", "train_state.pt", "config.yaml", "meta.json"


def save_checkpoint(root: Path, epoch: int, model: torch.nn.Module, train_state: dict, cfg: DictConfig,
                    meta: dict, keep: int) -> Path:
    """Write root/epoch_NNNN atomically; keep the newest `keep` checkpoints."""
    final = root / f"epoch_{epoch:04d}"
    with atomic_directory(final, replace=True) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(train_state, tmp / STATE)
        (tmp / CONFIG).write_text(OmegaConf.to_yaml(cfg))
        (tmp / META).write_text(json.dumps({"epoch": epoch, **meta}, indent=1))
    for old in sorted(root.glob("epoch_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(root.glob("epoch_*")) if root.exists() else []
    return found[-1] if found else None


def load_checkpoint_files(path: Path) -> tuple[dict, dict, DictConfig, dict]:
    """(weights, train_state, config, meta); never unpickles code (safetensors + torch.load weights_only)."""
    path = Path(path)
    for name in (WEIGHTS, STATE, CONFIG, META):
        if not (path / name).exists():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    weights = load_file(str(path / WEIGHTS))
    state = torch.load(path / STATE, weights_only=True, map_location="cpu")
    return weights, state, OmegaConf.load(path / CONFIG), json.loads((path / META).read_text())
