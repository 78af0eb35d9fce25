"""PNG plots of a run, like the experiments': predictions vs targets, loss components and correlation by epoch."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dcell_core.fileio import atomic_write_bytes  # noqa: E402


def save_png(fig, path: Path) -> Path:
    """Render `fig` as a PNG (100 dpi, tight box), close it, and write the file atomically; returns path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def predictions_plot(pred: np.ndarray, target: np.ndarray, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(target, pred, s=4, alpha=0.4)
    lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("target")
    ax.set_ylabel("prediction")
    ax.set_title(title)
    return save_png(fig, path)


def history_plots(history: list[dict], out_dir: Path) -> list[Path]:
    """Loss components and correlations over epochs from the per-epoch metric dicts."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train/loss", "train/root_mse", "train/aux_weighted", "train/l2", "val/mse"):
        if key in history[0] and any(h[key] > 0 for h in history):  # a log axis cannot show an all-zero series
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("loss components")
    ax.legend()
    paths = [save_png(fig, out_dir / "loss_components.png")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train/pearson", "val/pearson", "val/spearman"):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title("correlation of the root prediction")
    ax.legend()
    paths.append(save_png(fig, out_dir / "correlation.png"))
    return paths
