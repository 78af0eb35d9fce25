"""`python -m dcell_core.train [hydra overrides] [--output-dir DIR]`: train one DCell locally (no Ray).

Writes metrics.jsonl, plots/*.png and checkpoints/epoch_NNNN/ (weights in safetensors, optimizer state, the
resolved config) under train.output_dir. Resume with `train.resume_from=<run dir or checkpoint dir>`: the run
continues at the epoch after the checkpoint's.
"""
from __future__ import annotations

import argparse
import sys

from dcell_core.cli import compose_or_exit, fail_usage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcell_core.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=yeast_cell_cycle train.epochs=3")
    ap.add_argument("--output-dir", help="run directory (default: train.output_dir)")
    args = ap.parse_args(argv)
    cfg = compose_or_exit(args.overrides)

    from dcell_core.train.loop import train

    def report(metrics: dict, checkpoint) -> None:
        print(f"epoch {metrics['epoch']:3d}  loss {metrics['train/loss']:.4f}  root_mse {metrics['train/root_mse']:.4f}"
              f"  val_mse {metrics['val/mse']:.4f}  val_pearson {metrics['val/pearson']:.3f}"
              f"  val_spearman {metrics['val/spearman']:.3f}  lr {metrics['lr']:.2e}"
              f"  {metrics['samples_per_s']:.0f} samples/s" + ("  COLLAPSED" if metrics["val/collapse"] else ""),
              flush=True)

    try:
        result = train(cfg, report, args.output_dir)
    except (FileNotFoundError, ValueError) as e:  # bad settings or input files: one message, exit 2
        return fail_usage(str(e))
    print(f"initial prediction diversity {result.history[0]['init_diversity']:.4f}" if result.history else
          "no epoch left to run (already at train.epochs)")
    print(f"run directory {result.output_dir}")
    print(f"checkpoint    {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
