"""One training run: `train(cfg, report)` drives a DCell on a composed config, locally or inside a Ray trial.

The caller gets per-epoch metrics and the path of the epoch's checkpoint through `report`; nothing here knows
about Ray or MLflow, so the search drives exactly this function.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcell_core.data import RunData, load_run_data
from dcell_core.fileio import atomic_write_bytes
from dcell_core.genotypes import GenotypeBatcher
from dcell_core.nn import LossConfig, ModelConfig, build_dcell, dcell_loss, prediction_health
from dcell_core.nn.common import BN_MOMENTUM
from dcell_core.train.checkpoint import latest_checkpoint, load_checkpoint_files, save_checkpoint
from dcell_core.train.config import TrainConfig
from dcell_core.train.metrics import LOSS_METRICS, TRAIN_METRICS, regression_metrics

Report = Callable[[dict, Optional[Path]], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the run stops at once (retrying would repeat it)."""


@dataclass
class TrainResult:
    history: list[dict]
    output_dir: Path
    checkpoint: Optional[Path]
    model: torch.nn.Module = field(repr=False)
    data: RunData = field(repr=False)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The configured optimizer, in torch's fused form (one kernel over all parameters; measured against the
    default multi-tensor form by benchmarks/optimizer.py, docs/performance.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type in ("cpu", "cuda")
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.optimizer_weight_decay, fused=fused)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.optimizer_weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.optimizer_weight_decay,
                           fused=fused)


def lr_factor(t: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the peak lr after `step` optimizer steps (warm-up, then the schedule); stepped per batch."""
    total = t.epochs * steps_per_epoch
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    floor = t.lr_min / t.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.lr_schedule == "constant":
            return 1.0
        if t.lr_schedule == "step":
            return t.lr_gamma ** ((step // steps_per_epoch) // t.lr_step_epochs)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def predict(model: torch.nn.Module, batcher: GenotypeBatcher, rows: np.ndarray, batch_size: int,
            device: torch.device, autocast: bool) -> tuple[np.ndarray, np.ndarray]:
    """Root predictions [N] and targets [N] over `rows`, in eval mode."""
    model.eval()
    preds, targets = [], []
    for x, y in batcher.iterate(rows, batch_size, shuffle=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x.to(device, non_blocking=True))
        preds.append(out.prediction.float().cpu())
        targets.append(y.reshape(len(y), -1)[:, 0])
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()


@torch.no_grad()
def precise_batch_norm(model: torch.nn.Module, batcher: GenotypeBatcher, rows: np.ndarray, batch_size: int,
                       seed: int, epoch: int, device: torch.device, autocast: bool) -> int:
    """Set every batch-norm running mean and variance to the equal-weight mean, over the training batches of
    `rows` (full batches of `batch_size`, seeded order), of the batch statistics the model normalizes with in
    training (the variance unbiased, as BatchNorm1d keeps it). Returns the number of batches.

    Each batch's statistics are read back from the running buffers, zeroed before it: momentum x statistic."""
    buffers = [b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1].startswith("running_")]
    if not buffers:
        return 0
    sums = [torch.zeros_like(b, dtype=torch.float64) for b in buffers]
    model.train()
    n = 0
    for x, _ in batcher.iterate(rows, batch_size, seed=seed, epoch=epoch, drop_last=len(rows) >= batch_size):
        for b in buffers:
            b.zero_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model(x.to(device, non_blocking=True))
        for total, b in zip(sums, buffers):
            total += b.double() / BN_MOMENTUM
        n += 1
    if n == 0:
        raise ValueError("batch_norm_stats=precise: the train split has no rows to take statistics from")
    for total, b in zip(sums, buffers):
        b.copy_(total / n)
    return n


def train(cfg: DictConfig, report: Report | None = None, output_dir: str | Path | None = None) -> TrainResult:
    """Train the model of a composed config; `report(metrics, checkpoint_dir)` is called after every epoch.

    Resumes from `train.resume_from` (a checkpoint directory, or a run directory: its latest checkpoint).
    """
    run = Training(cfg, output_dir)
    for metrics, checkpoint in run.epochs():
        if report is not None:
            report(metrics, checkpoint)
    return run.result()


def train_target_mean(dataset) -> float:
    """The mean of the trained phenotype (column 0, what the root predicts) over the train split."""
    y = dataset.phenotypes.reshape(len(dataset), -1)[dataset.splits["train"], 0]
    return float(np.mean(y, dtype=np.float64))


class Training:
    """One training run, set up on construction and advanced one epoch at a time by `epochs()`.

    Several runs can be advanced in lockstep in one process (a search trial's replicates): each keeps its own
    torch RNG state between epochs, so its numbers are those it would have trained alone.
    """

    def __init__(self, cfg: DictConfig, output_dir: str | Path | None = None):
        t: TrainConfig = OmegaConf.to_object(cfg.train)
        t.validate()
        m: ModelConfig = OmegaConf.to_object(cfg.model)
        m.validate()
        loss_cfg: LossConfig = OmegaConf.to_object(cfg.loss)
        loss_cfg.validate()
        self.cfg, self.t, self.loss_cfg = cfg, t, loss_cfg
        self.out_dir = Path(output_dir or t.output_dir).expanduser().resolve()
        self.ckpt_root = self.out_dir / "checkpoints"
        self.device = device = pick_device(t.device)
        self.autocast = t.bf16 and device.type == "cuda"
        if t.bf16 and device.type != "cuda":
            raise ValueError("train.bf16=true needs a CUDA device (bf16 autocast on CPU is not supported here)")
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        seed_everything(t.seed)

        self.data = data = load_run_data(cfg)
        self.batcher = GenotypeBatcher.from_dataset(data.dataset)
        self.train_rows, self.val_rows = data.dataset.splits["train"], data.dataset.splits["val"]
        self.model = model = build_dcell(data.hierarchy, m).to(device)
        self.optimizer = make_optimizer(model, t, device)
        steps_per_epoch = math.ceil(len(self.train_rows) / t.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(t, steps_per_epoch))

        self.decay_weights = model.decay_weights() if loss_cfg.weight_decay > 0 else None
        self.history: list[dict] = []
        self.start_epoch = 1
        resume = _resolve_resume(t.resume_from)
        if resume is not None:
            weights, state, _, meta = load_checkpoint_files(resume)
            model.load_state_dict(weights, strict=True)
            _check_optimizer_state(resume, state["optimizer"], self.optimizer)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.history = meta["history"]
            self.init_diversity = meta["init_diversity"]
            self.start_epoch = meta["epoch"] + 1
        else:
            if t.head_bias_init == "target_mean":
                mean = train_target_mean(data.dataset)
                with torch.no_grad():
                    for bias in model.head_biases():
                        bias.fill_(mean)
            first, _ = predict(model, self.batcher, self.train_rows[: t.batch_size], t.batch_size, device,
                               self.autocast)
            self.init_diversity = float(first.std())
        self.rng = torch.get_rng_state()
        self.checkpoint: Optional[Path] = None

    def epochs(self) -> Iterator[tuple[dict, Path]]:
        """Train the remaining epochs; after each, yield its metrics and the path of its checkpoint."""
        t, model, optimizer, device, autocast = self.t, self.model, self.optimizer, self.device, self.autocast
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(self.start_epoch, t.epochs + 1):
            torch.set_rng_state(self.rng)
            started = time.perf_counter()
            model.train()
            sums: dict[str, torch.Tensor] = {}
            preds, targets = [], []
            seen = 0
            for step, (x, y) in enumerate(self.batcher.iterate(self.train_rows, t.batch_size, seed=t.seed,
                                                               epoch=epoch)):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = model(x)
                    loss, parts = dcell_loss(out, y, self.loss_cfg, self.decay_weights)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step + 1} "
                                             f"(components: { {k: float(v) for k, v in parts.items()} })")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                self.scheduler.step()
                for name, key in LOSS_METRICS.items():
                    sums[name] = sums.get(name, 0) + parts[key].detach().float() * len(y)
                preds.append(out.prediction.detach().float())
                targets.append(y.reshape(len(y), -1)[:, 0])
                seen += len(y)
            seconds = time.perf_counter() - started
            if t.batch_norm_stats == "precise":  # a no-op without batch norm
                precise_batch_norm(model, self.batcher, self.train_rows, t.batch_size, t.seed, epoch, device,
                                   autocast)
            train_fit = regression_metrics(torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy())
            val_pred, val_target = predict(model, self.batcher, self.val_rows, t.eval_batch_size, device, autocast)
            val_fit = regression_metrics(val_pred, val_target)
            health = prediction_health(torch.from_numpy(val_pred), torch.from_numpy(val_target), t.collapse_ratio)
            metrics = {
                "epoch": epoch,
                **{f"train/{k}": float(v) / seen for k, v in sums.items()},
                "train/pearson": train_fit["pearson"],
                **{f"val/{k}": v for k, v in val_fit.items()},
                "val/pred_std": health["pred_std"],
                "val/std_ratio": health["std_ratio"],
                "val/collapse": health["collapsed"],
                "init_diversity": self.init_diversity,
                "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": seen / seconds,
                "epoch_s": seconds,
            }
            if metrics.keys() != TRAIN_METRICS.keys():  # the registry is what searches and summaries rely on
                raise AssertionError(f"epoch metrics {sorted(metrics)} differ from TRAIN_METRICS "
                                     f"{sorted(TRAIN_METRICS)}")
            self.history.append(metrics)
            _write_history(self.out_dir / "metrics.jsonl", self.history)
            if t.plots:
                from dcell_core.train.plots import history_plots, predictions_plot

                predictions_plot(val_pred, val_target, f"validation, epoch {epoch}",
                                 self.out_dir / "plots" / "val_predictions.png")
                history_plots(self.history, self.out_dir / "plots")
            self.rng = torch.get_rng_state()
            state = {"optimizer": optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "torch_rng": self.rng}
            meta = {"history": self.history, "init_diversity": self.init_diversity,
                    "fingerprint": self.data.hierarchy.fingerprint, "genes": list(self.data.hierarchy.genes),
                    "terms": list(self.data.hierarchy.terms)}
            self.checkpoint = save_checkpoint(self.ckpt_root, epoch, model, state, self.cfg, meta, t.checkpoint_keep)
            yield metrics, self.checkpoint

    def result(self) -> TrainResult:
        return TrainResult(self.history, self.out_dir, self.checkpoint or latest_checkpoint(self.ckpt_root),
                           self.model, self.data)


def _resolve_resume(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.name == "checkpoints":
        latest = latest_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"train.resume_from={path}: no epoch_* checkpoint in {p}")
        return latest
    if not p.is_dir():
        raise FileNotFoundError(f"train.resume_from={path}: {p} is not a checkpoint directory")
    return p


def _check_optimizer_state(path: Path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state must be for as many parameter tensors as the model has now (the weights are
    stored per bucket, the optimizer state per parameter tensor: a state written before the model kept one flat
    parameter per kind and stratum does not fit)."""
    found = sum(len(g["params"]) for g in saved["param_groups"])
    expected = sum(len(g["params"]) for g in optimizer.param_groups)
    if found != expected:
        raise ValueError(f"train.resume_from: checkpoint {path} holds optimizer state for {found} parameter "
                         f"tensors, the model has {expected} (written by a version that kept other parameter "
                         "tensors): its weights still load, but training cannot resume from it; start a new run")


def _write_history(path: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per epoch, rewritten whole so a resumed run never repeats an epoch."""
    atomic_write_bytes(path, "".join(json.dumps(row) + "\n" for row in history).encode())
