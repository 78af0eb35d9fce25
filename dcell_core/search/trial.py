"""The Ray Tune trainable: one trial = base config + fixed overrides + sampled overrides, trained by the loop.

Runs inside Ray workers, so it lives in dcell_core (never in the repo's `platform` package) and uses only the
`ray.tune` APIs (report, get_checkpoint, get_context, Checkpoint). It records itself in its MLflow child run.

With `replicates` k > 1 the trial trains its configuration k times (seeds: replicate_seed), in lockstep one epoch
at a time, and reports per epoch the mean over its replicates under the normal metric names, so ASHA and the
winner rule judge the mean; its run also holds each replicate's values and the interval of the mean (names and
tags in ledger.py). Its Tune checkpoint holds every replicate's (`rep<r>/`), so a retry or a resumed search
continues all of them; its MLflow `checkpoint/` and `plots/` are replicate 0's. With k = 1 it does exactly what
it did before replicates existed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ray import tune

from dcell_core.search import ledger, tracking
from dcell_core.train.checkpoint import META


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares (passed with tune.with_parameters)."""
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    overrides: tuple[str, ...]  # fixed Hydra overrides of the search file plus the command line
    search_seed: int
    metric: str
    mode: str
    log_checkpoints: bool = True
    tags: dict = field(default_factory=dict)
    replicates: int = 1  # k: the seeds each configuration is trained with (replicate_seed)
    replicate_split: bool = False  # replicates r > 0 also deal their own train/validation split (split_seed)


def trial_seed(search_seed: int, sampled: dict) -> int:
    """Reproducible seed of a trial: a hash of the search's seed and the trial's sampled values (Ray's trial ids
    are random, so they would not give the same seed when the search is run again)."""
    material = json.dumps([search_seed, sorted((k, repr(v)) for k, v in sampled.items())])
    return int(hashlib.sha256(material.encode()).hexdigest()[:8], 16)


def replicate_seed(search_seed: int, sampled: dict, replicate: int) -> int:
    """train.seed of replicate `replicate` (0-based) of a trial. Replicate 0 has the trial's own seed (a searched
    train.seed, else trial_seed), so a search with replicates extends the same search without them; replicate
    r > 0 a hash of the search's seed, the sampled values and r."""
    if replicate == 0:
        return int(sampled["train.seed"]) if "train.seed" in sampled else trial_seed(search_seed, sampled)
    material = json.dumps([search_seed, sorted((k, repr(v)) for k, v in sampled.items()), replicate])
    return int(hashlib.sha256(material.encode()).hexdigest()[:8], 16)


def replicate_overrides(ctx: TrialContext, sampled: dict, replicate: int) -> list[str]:
    """The Hydra overrides that make replicate `replicate` of a trial (after the fixed and sampled ones): its
    train.seed (none for replicate 0 of a searched seed, which the sampled overrides set), and with
    ctx.replicate_split, for r > 0, data.genotypes.split_seed = its train.seed (replicate 0 keeps the search's
    split)."""
    seed = replicate_seed(ctx.search_seed, sampled, replicate)
    out = [f"train.seed={seed}"] if replicate > 0 or "train.seed" not in sampled else []
    if ctx.replicate_split and replicate > 0:
        out.append(f"data.genotypes.split_seed={seed}")
    return out


def replicate_metrics(per_replicate: list[dict], metric: str) -> tuple[dict, dict]:
    """(reported, logged) for one epoch of k replicates' metrics: reported is the mean of each metric (Tune,
    and MLflow under the normal names; the replicate's own dict when k = 1); logged adds each replicate's value
    (ledger.replicate_metric) and the interval of the mean of `metric` (ledger.interval_metrics) when k > 1."""
    if len(per_replicate) == 1:
        return per_replicate[0], per_replicate[0]
    epochs = {m["epoch"] for m in per_replicate}
    if len(epochs) != 1:
        raise RuntimeError(f"replicates out of step: epochs {sorted(epochs)}")
    mean = {name: float(np.mean([m[name] for m in per_replicate])) for name in per_replicate[0] if name != "epoch"}
    reported = {"epoch": per_replicate[0]["epoch"], **mean}
    logged = dict(reported)
    for r, m in enumerate(per_replicate):
        logged.update({ledger.replicate_metric(name, r): v for name, v in m.items() if name != "epoch"})
    _, low, high = ledger.mean_interval([m[metric] for m in per_replicate])
    logged.update(zip(ledger.interval_metrics(metric), (low, high)))
    return reported, logged


def dcell_trial(config: dict, ctx: TrialContext) -> None:
    """Train one sampled configuration (k replicates of it); report per epoch to Tune (with the checkpoint) and
    to MLflow."""
    from dcell_core.config import compose
    from dcell_core.search.space import format_override_value, trial_overrides
    from dcell_core.train.loop import NonFiniteLossError, Training

    started = time.time()
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    trial_dir = Path(tune_ctx.get_trial_dir())
    client = tracking.MlflowClient(tracking_uri=ctx.tracking_uri)
    sampled = dict(config)
    k = ctx.replicates
    restored = _restore_checkpoint(trial_dir)
    # A retry or a resumed search continues from Tune's checkpoint: the epoch directory itself (k = 1), or one
    # per replicate under it.
    resumes = [restored] if k == 1 else [None if restored is None else restored / f"rep{r}" for r in range(k)]
    overrides = [[*ctx.overrides, *trial_overrides(sampled), *replicate_overrides(ctx, sampled, r),
                  *([] if resumes[r] is None else [f"train.resume_from={format_override_value(str(resumes[r]))}"])]
                 for r in range(k)]
    tags = dict(ctx.tags)
    if k > 1:
        seeds = ",".join(str(replicate_seed(ctx.search_seed, sampled, r)) for r in range(k))
        tags.update({ledger.TAG_REPLICATES: str(k), ledger.TAG_REPLICATE_SEEDS: seeds,
                     ledger.TAG_CHECKPOINT_REPLICATE: "0"})
    run_id = ledger.start_trial(client, ctx.experiment_id, ctx.parent_run_id, trial_id, tracking.run_name(sampled),
                                sampled, tags)
    placement = _placement_tags(client, run_id, resumes[0])
    tracking.set_tags(client, run_id, placement)
    attempt = len(placement[ledger.TAG_NODES].split(","))

    def log_attempt_time() -> None:
        tracking.log_metrics(client, run_id, {ledger.ATTEMPT_S: time.time() - started}, step=attempt)

    try:
        cfgs = [compose(o) for o in overrides]
        ledger.set_budget(client, run_id, int(cfgs[0].train.epochs))
        run_dir = trial_dir / "run"
        run_dirs = [run_dir] if k == 1 else [run_dir / f"rep{r}" for r in range(k)]
        for cfg, directory in zip(cfgs, run_dirs):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "resolved_config.yaml").write_text(_yaml(cfg))
        client.log_artifact(run_id, str(run_dirs[0] / "resolved_config.yaml"))

        # Epochs this run already has in MLflow: after a resume from an earlier checkpoint they are recomputed
        # (bit for bit, see tests/test_train.py) and must not be logged twice.
        logged = {m.step for m in client.get_metric_history(run_id, "epoch")}
        runs = [Training(cfg, output_dir=directory) for cfg, directory in zip(cfgs, run_dirs)]
        for results in zip(*(run.epochs() for run in runs)):  # one epoch of every replicate
            reported, values = replicate_metrics([metrics for metrics, _ in results], ctx.metric)
            checkpoints = [checkpoint for _, checkpoint in results]
            if int(reported["epoch"]) not in logged:
                tracking.log_metrics(client, run_id, values, step=int(reported["epoch"]))
            tracking.log_artifacts(client, run_id, [run_dirs[0] / "plots"], "plots")
            if ctx.log_checkpoints:
                tracking.log_artifacts(client, run_id, [checkpoints[0]], "checkpoint")
            log_attempt_time()
            with _tune_checkpoint(trial_dir, checkpoints) as directory:
                tune.report(reported, checkpoint=tune.Checkpoint.from_directory(str(directory)))
    except NonFiniteLossError as e:
        # Deterministic: a retry from the last checkpoint would hit it again. End the trial as FAILED now and
        # give the scheduler and searcher a worst-case value instead of an error that would be retried.
        log_attempt_time()
        ledger.trial_failed(client, run_id, str(e), nonfinite=True)
        tune.report({ctx.metric: float("nan"), "nonfinite_loss": 1.0})
        return
    except SystemExit:
        raise  # Tune stopping the trial (a scheduler decision): the driver records it, see progress.py
    except BaseException as e:
        log_attempt_time()
        ledger.trial_failed(client, run_id, f"{type(e).__name__}: {e}")
        raise
    log_attempt_time()
    ledger.trial_finished(client, run_id)


def trial_dirname(trial) -> str:
    """Short trial directories (Ray's default embeds parameter values, '=' included, in the path)."""
    return f"trial_{trial.trial_id}"


def _restore_checkpoint(trial_dir: Path) -> Path | None:
    """Copy Tune's latest checkpoint of this trial (after a retry or a resumed search) next to the trial."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    target = trial_dir / "restored_checkpoint"
    if target.exists():
        shutil.rmtree(target)
    return Path(checkpoint.to_directory(str(target)))


@contextmanager
def _tune_checkpoint(trial_dir: Path, checkpoints: list[Path]):
    """The directory Tune copies as the trial's checkpoint (tune.report copies it before returning): the epoch
    checkpoint itself for one replicate; for k, a directory of `rep<r>/` hard links to each one's."""
    if len(checkpoints) == 1:
        yield checkpoints[0]
        return
    staged = trial_dir / "replicates_checkpoint"
    if staged.exists():
        shutil.rmtree(staged)
    for r, checkpoint in enumerate(checkpoints):
        shutil.copytree(checkpoint, staged / f"rep{r}", copy_function=os.link)
    try:
        yield staged
    finally:
        shutil.rmtree(staged)


def _placement_tags(client, run_id: str, restored: Path | None) -> dict:
    """Where this attempt of the trial runs: its Ray node (appended to the nodes of earlier attempts), the GPUs
    Ray gave it, and the checkpoint epoch it continues from after a retry or a resumed search."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    earlier = client.get_run(run_id).data.tags.get(ledger.TAG_NODES)
    tags = {ledger.TAG_NODE: node, ledger.TAG_NODES: f"{earlier},{node}" if earlier else node,
            ledger.TAG_GPUS: ",".join(map(str, ray.get_gpu_ids()))}
    if restored is not None:
        tags[ledger.TAG_RESUMED] = json.loads((restored / META).read_text())["epoch"]
    return tags


def _yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)
