"""Promotion: the best trial of a search becomes the registered, aliased, installed production checkpoint.

Steps, each safe to repeat: pick the winner (selection.py); download its training checkpoint and check it is
the run's last epoch with the recorded metric; rebuild its hierarchy from the resolved config and check the
fingerprint, genes and terms; write the production checkpoint into a staging directory and load it back;
refuse when the alias holds a model at least as good (registry.py); register a version (or reuse the one this
run already has); install it atomically next to the previous one (install.py); move the alias last.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from dcell_core.search import ledger
from dcell_core.serving import registry
from dcell_core.serving.checkpoint import (WEIGHTS, CheckpointError, load_checkpoint, read_info, read_weights,
                                          verify_files, write_checkpoint)
from dcell_core.serving.install import Installed, destination_lock, install
from dcell_core.serving.selection import (PromotionError, Winner, best_run, check_finished, describe_counts,
                                          metric_and_mode, open_store, resolve_search, tracking_uri_for)


@dataclass
class PromoteRequest:
    search: str  # parent run id, search name, or search-space (experiment) name
    metric: str | None = None  # default: the search's metric
    mode: str | None = None  # default: the search's mode
    model_name: str = "dcell"
    alias: str = "production"
    dest: Path | None = None  # default: <project_dir>/checkpoints/production
    tracking_uri: str | None = None  # default: sqlite <project_dir>/mlflow.db
    project_dir: Path = field(default_factory=Path.cwd)
    force: bool = False  # move the alias even when it holds a better or incomparable model
    allow_running: bool = False  # promote from a search that is not FINISHED (its winner may still change)
    stream: object = sys.stdout


@dataclass(frozen=True)
class PromoteOutcome:
    winner: Winner
    version: str
    new_version: bool
    alias_moved: bool
    installed: Installed
    info: dict  # checkpoint.json of the installed checkpoint


def promote(req: PromoteRequest) -> PromoteOutcome:
    out = req.stream
    try:
        registry.check_model_name(req.model_name)
        registry.check_model_name(req.alias, "--alias")
    except ValueError as e:
        raise PromotionError(str(e)) from e
    uri = tracking_uri_for(req.tracking_uri, req.project_dir)
    dest = Path(req.dest) if req.dest is not None else Path(req.project_dir) / "checkpoints" / "production"
    client = open_store(uri)
    parent = resolve_search(client, req.search)
    check_finished(parent, req.allow_running)
    metric, mode = metric_and_mode(parent, req.metric, req.mode)
    winner = best_run(client, parent, metric, mode)
    search = parent.data.tags.get(ledger.TAG_SEARCH, parent.info.run_id)
    print(f"search {search} (parent run {parent.info.run_id}, {parent.info.status}): {describe_counts(winner.counts)}",
          file=out)
    print(f"winner: run {winner.run_id} ({winner.run.info.run_name}), {metric} {winner.value:.6g} ({mode})", file=out)
    with tempfile.TemporaryDirectory(prefix="dcell-promote-") as tmp:
        staged = _stage(client, parent, winner, req, Path(tmp))
        info = read_info(staged)
        tags = _version_tags(winner, parent, info)
        with destination_lock(dest.absolute()):
            current = registry.alias_version(client, req.model_name, req.alias)
            registry.check_replaces(current, req.model_name, req.alias, tags, req.force)
            version = registry.version_of_run(client, req.model_name, winner.run_id, tags[registry.TAG_WEIGHTS])
            new_version = version is None
            if new_version:
                version = registry.register(client, uri, req.model_name, winner.run.info.experiment_id,
                                            winner.run_id, staged, tags, f"DCell promoted from search {search}")
                content = staged
            else:  # install exactly the files of the registered version
                content = registry.download_version(client, version, uri, Path(tmp) / "registered")
            content_info = read_info(content)
            verify_files(content, content_info)
            installed = install(dest, f"{req.model_name}-v{version.version}", _copy_into(content),
                                _same_content(content_info))
            moved = current is None or str(current.version) != str(version.version)
            if moved:
                client.set_registered_model_alias(req.model_name, req.alias, version.version)
    held = f"from version {current.version}" if current is not None and moved else "new" if moved else "unchanged"
    print(f"registry: {req.model_name} version {version.version} ({'new' if new_version else 'existing'}); "
          f"alias {req.alias} -> {version.version} ({held})", file=out)
    state = "installed" if installed.changed else "unchanged"
    print(f"checkpoint: {installed.dest} -> {installed.target.name} ({state})"
          + (f"; previous kept as {installed.dest}.prev -> {installed.previous.name}" if installed.previous else ""),
          file=out, flush=True)
    return PromoteOutcome(winner, str(version.version), new_version, moved, installed, content_info)


def _stage(client, parent, winner: Winner, req: PromoteRequest, tmp: Path) -> Path:
    """Download the winner's training checkpoint, check it, and write the production checkpoint to tmp/checkpoint."""
    from dcell_core.serving.card import model_card

    run_id = winner.run_id
    src = tmp / "source"
    src.mkdir()
    top = {a.path for a in client.list_artifacts(run_id)}
    if "checkpoint" not in top:
        raise PromotionError(f"run {run_id} has no checkpoint/ artifact (was the search run with checkpoint logging?)")
    ckpt = Path(client.download_artifacts(run_id, "checkpoint", str(src)))
    plots = _plots(client, run_id, parent.info.run_id, top, src)
    for name in (WEIGHTS, "config.yaml", "meta.json"):
        if not (ckpt / name).is_file():
            raise PromotionError(f"run {run_id}: its checkpoint artifact has no {name}")
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = OmegaConf.load(ckpt / "config.yaml")
    _check_last_epoch(client, winner, meta)
    hierarchy = rebuild_hierarchy(cfg)
    if (hierarchy.fingerprint, list(hierarchy.genes), list(hierarchy.terms)) != (
            meta["fingerprint"], meta["genes"], meta["terms"]):
        raise PromotionError(f"run {run_id}: its config rebuilds hierarchy {hierarchy.fingerprint}, but the checkpoint "
                             f"was trained on {meta['fingerprint']} (input files changed since the search?)")
    history = meta["history"]
    final = dict(winner.run.data.metrics)
    staged = tmp / "checkpoint"
    staged.mkdir()
    write_checkpoint(
        staged, weights=read_weights(ckpt / WEIGHTS), config=cfg, hierarchy=hierarchy,
        metrics={"final": final, "history": history},
        source={"run_id": run_id, "run_name": winner.run.info.run_name, "parent_run_id": parent.info.run_id,
                "search": parent.data.tags.get(ledger.TAG_SEARCH, ""), "experiment_id": winner.run.info.experiment_id,
                "trial_id": winner.run.data.tags.get(ledger.TAG_TRIAL, ""), "epoch": meta["epoch"],
                "params": dict(winner.run.data.params)},
        metric={"name": winner.metric, "mode": winner.mode, "value": winner.value},
        card=model_card(model_name=req.model_name, alias=req.alias, parent=parent, winner=winner,
                        hierarchy=hierarchy, config=cfg, history=history,
                        plots=[f"plots/{p.name}" for p in plots]),
        plots=plots)
    load_checkpoint(staged, hierarchy=hierarchy)  # the staged files rebuild the model, or promotion stops here
    return staged


def _plots(client, run_id: str, parent_run_id: str, top: set, src: Path) -> list[Path]:
    out = []
    if "plots" in top:
        out += sorted(Path(client.download_artifacts(run_id, "plots", str(src))).glob("*.png"))
    search_plot = "parallel_coordinates.png"
    if search_plot in {a.path for a in client.list_artifacts(parent_run_id)}:
        (src / "search").mkdir()
        out.append(Path(client.download_artifacts(parent_run_id, search_plot, str(src / "search"))))
    return out


def _check_last_epoch(client, winner: Winner, meta: dict) -> None:
    """The checkpoint artifact is the run's last epoch and reproduces the metric the run logged for it."""
    run = winner.run
    last_epoch = int(run.data.metrics.get("epoch", -1))
    if meta["epoch"] != last_epoch:
        raise PromotionError(f"run {run.info.run_id}: its checkpoint is from epoch {meta['epoch']}, but the run logged "
                             f"{last_epoch} epochs; the checkpoint does not hold the model the metric describes")
    # A trial with replicates logs their mean as its metric; its checkpoint is one replicate's (ledger.py).
    replicate = run.data.tags.get(ledger.TAG_CHECKPOINT_REPLICATE)
    name = winner.metric if replicate is None else ledger.replicate_metric(winner.metric, int(replicate))
    expected = run.data.metrics.get(name)
    logged = meta["history"][-1].get(winner.metric) if meta["history"] else None
    if logged is None or expected is None or not math.isclose(float(logged), expected, rel_tol=1e-9, abs_tol=1e-12):
        raise PromotionError(f"run {run.info.run_id}: its checkpoint records {winner.metric} {logged} at epoch "
                             f"{meta['epoch']}, the run logged {expected} ({name})")


def rebuild_hierarchy(cfg):
    """The hierarchy of a resolved training config, through this process's hierarchy cache."""
    from dcell_core.config import DCellConfig, cache_dir, compose
    from dcell_core.data import load_run_hierarchy

    typed = OmegaConf.merge(OmegaConf.structured(DCellConfig), cfg)
    return load_run_hierarchy(typed, cache_dir(compose([])))


def _version_tags(winner: Winner, parent, info: dict) -> dict:
    return {registry.TAG_RUN: winner.run_id, registry.TAG_METRIC: winner.metric, registry.TAG_MODE: winner.mode,
            registry.TAG_VALUE: repr(winner.value), registry.TAG_FINGERPRINT: info["fingerprint"],
            registry.TAG_WEIGHTS: info["files"][WEIGHTS], registry.TAG_PARENT: parent.info.run_id,
            registry.TAG_SEARCH: parent.data.tags.get(ledger.TAG_SEARCH, "")}


def _copy_into(content: Path):
    def write(staging: Path) -> None:
        shutil.copytree(content, staging, dirs_exist_ok=True)

    return write


def _same_content(info: dict):
    """An existing versioned directory is reused only when it verifies and holds the same files."""
    def reuse(directory: Path) -> bool:
        try:
            found = read_info(directory)
            verify_files(directory, found)
        except CheckpointError:
            return False  # rewritten from the registered files
        return found["files"] == info["files"] and found["source"] == info["source"]

    return reuse

