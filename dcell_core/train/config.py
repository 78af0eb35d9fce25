"""Typed configuration of one training run (the Hydra `train` group)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
HEAD_BIAS_INITS = ("model", "target_mean")
BATCH_NORM_STATS = ("ema", "precise")


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 64  # genotypes per optimizer step
    eval_batch_size: int = 1024  # genotypes per forward pass when evaluating
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-3  # peak learning rate
    # Decoupled weight decay of AdamW. The paper's L2 penalty on W is model.weight_decay, added to the loss;
    # keep this at 0 unless you want both.
    optimizer_weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    lr_schedule: str = "cosine"  # cosine (to lr_min over all steps) | step (x lr_gamma every lr_step_epochs) | constant
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs (fractions allowed)
    lr_min: float = 0.0  # cosine floor
    lr_step_epochs: int = 5  # step schedule period
    lr_gamma: float = 0.5  # step schedule factor
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    # Where every head's bias (the root's and the auxiliary terms') starts: "model" (the model's init, uniform
    # in +-model.init_range) or "target_mean" (the mean training target). Adam moves each of a root's L weights
    # by about lr per step, so a wide root (whole yeast: 1,795 neurons) needs a small lr, at which the bias takes
    # thousands of steps to reach the data's level; starting there removes that phase. Not applied on resume.
    head_bias_init: str = "model"
    # Batch-norm statistics used in eval mode (validation, test, serving): "ema" (the running average that
    # BatchNorm1d keeps, momentum 0.1: about the last 10 batches) or "precise" (after every epoch, before
    # validation, the equal-weight mean of every training batch's statistics: one extra forward pass over the
    # train split). On whole-genome data a low term is hit in one sample of a few batches, so what the last 10
    # batches hold is mostly luck, and eval mode normalizes with it (docs/genotypes.md: whole yeast). No effect
    # without batch norm.
    batch_norm_stats: str = "ema"
    seed: int = 0  # weights, batch order
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    bf16: bool = False  # bfloat16 autocast for forward/backward (CUDA only)
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    output_dir: str = "runs/${data.name}"  # metrics.jsonl, plots/, checkpoints/ (relative to the working dir)
    checkpoint_keep: int = 2  # newest epoch checkpoints kept on disk
    resume_from: Optional[str] = None  # a checkpoint directory to continue from (its next epoch)
    plots: bool = True  # write PNG plots each epoch
    collapse_ratio: float = 0.1  # flag collapse when prediction std < this x target std on validation

    def validate(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"train.lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.batch_norm_stats not in BATCH_NORM_STATS:
            problems.append(f"train.batch_norm_stats must be one of {BATCH_NORM_STATS}, got "
                            f"{self.batch_norm_stats!r}")
        if self.head_bias_init not in HEAD_BIAS_INITS:
            problems.append(f"train.head_bias_init must be one of {HEAD_BIAS_INITS}, got {self.head_bias_init!r}")
        if self.device not in DEVICES:
            problems.append(f"train.device must be one of {DEVICES}, got {self.device!r}")
        if not self.lr > 0:
            problems.append(f"train.lr must be > 0, got {self.lr}")
        if self.grad_clip < 0 or self.warmup_epochs < 0 or self.optimizer_weight_decay < 0:
            problems.append("train.grad_clip, train.warmup_epochs and train.optimizer_weight_decay must be >= 0")
        if self.checkpoint_keep < 1:
            problems.append(f"train.checkpoint_keep must be >= 1, got {self.checkpoint_keep}")
        if problems:
            raise ValueError("invalid train config:\n  " + "\n  ".join(problems))
