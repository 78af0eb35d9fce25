"""The Ray Tune trainable: one trial = base config + fixed overrides + sampled overrides, trained by train().

Runs inside Ray workers, so it lives in dcell_core (never in the repo's `platform` package) and uses only the
`ray.tune` APIs (report, get_checkpoint, get_context, Checkpoint). It records itself in its MLflow child run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def trial_seed(search_seed: int, sampled: dict) -> int:
    """Reproducible seed of a trial: a hash of the search's seed and the trial's sampled values (Ray's trial ids
    are random, so they would not give the same seed when the search is run again)."""
    material = json.dumps([search_seed, sorted((k, repr(v)) for k, v in sampled.items())])
    return int(hashlib.sha256(material.encode()).hexdigest()[:8], 16)


def dcell_trial(config: dict, ctx: TrialContext) -> None:
    """Train one sampled configuration; report per epoch to Tune (with the checkpoint) and to MLflow."""
    from dcell_core.config import compose
    from dcell_core.search.space import format_override_value, trial_overrides
    from dcell_core.train.loop import NonFiniteLossError, train

    started = time.time()
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    trial_dir = Path(tune_ctx.get_trial_dir())
    client = tracking.MlflowClient(tracking_uri=ctx.tracking_uri)
    sampled = dict(config)
    overrides = [*ctx.overrides, *trial_overrides(sampled)]
    if "train.seed" not in sampled:  # a searched seed is the trial's own; otherwise one per trial
        overrides.append(f"train.seed={trial_seed(ctx.search_seed, sampled)}")
    restored = _restore_checkpoint(trial_dir)
    if restored is not None:
        overrides.append(f"train.resume_from={format_override_value(str(restored))}")
    run_id = ledger.start_trial(client, ctx.experiment_id, ctx.parent_run_id, trial_id, tracking.run_name(sampled),
                                sampled, ctx.tags)
    placement = _placement_tags(client, run_id, restored)
    tracking.set_tags(client, run_id, placement)
    attempt = len(placement[ledger.TAG_NODES].split(","))

    def log_attempt_time() -> None:
        tracking.log_metrics(client, run_id, {ledger.ATTEMPT_S: time.time() - started}, step=attempt)

    try:
        cfg = compose(overrides)
        ledger.set_budget(client, run_id, int(cfg.train.epochs))
        run_dir = trial_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "resolved_config.yaml").write_text(_yaml(cfg))
        client.log_artifact(run_id, str(run_dir / "resolved_config.yaml"))

        # Epochs this run already has in MLflow: after a resume from an earlier checkpoint they are recomputed
        # (bit for bit, see tests/test_train.py) and must not be logged twice.
        logged = {m.step for m in client.get_metric_history(run_id, "epoch")}

        def report(metrics: dict, checkpoint_dir: Path) -> None:
            if int(metrics["epoch"]) not in logged:
                tracking.log_metrics(client, run_id, metrics, step=int(metrics["epoch"]))
            tracking.log_artifacts(client, run_id, [run_dir / "plots"], "plots")
            if ctx.log_checkpoints:
                tracking.log_artifacts(client, run_id, [checkpoint_dir], "checkpoint")
            log_attempt_time()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

        train(cfg, report, output_dir=run_dir)
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
