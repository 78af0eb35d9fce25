"""`python -m benchmarks.search_overhead [--json] [--trials 8] [--epochs 16]`: what the platform costs.

Runs the same trials twice in this process, side by side: (1) as a platform search (local Ray, Optuna-free grid
of `train.seed` values so every trial does the same work, no early stopping, MLflow sqlite store, checkpoints
and plots logged), and (2) as plain `train()` calls in a pool of the same concurrency, no Ray, no MLflow. The
target: search wall time <= 1.15 x (sum of trial times / concurrency) + 20 s, trial times as the trials'
MLflow runs record them.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data=yeast_dna_repair", "train.num_threads=1", "train.plots=true"]


def _plain_trial(args: tuple[list[str], str]) -> float:
    overrides, out_dir = args
    from dcell_core.config import compose
    from dcell_core.train.loop import train

    start = time.perf_counter()
    train(compose(overrides), output_dir=out_dir)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=16, help="epochs per trial (about 20 s per trial on 2 cores)")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)

    from dcell_core.search.driver import SearchRequest, run_search

    seeds = list(range(args.trials))
    overrides = [*DATA, f"train.epochs={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("DCELL_CACHE_DIR", str(tmp / "cache"))
        spec = {"name": "overhead", "description": "platform overhead benchmark", "overrides": overrides,
                "metric": "val/pearson", "mode": "max",
                "search": {"algorithm": "grid", "seed": 0, "num_samples": 1, "max_concurrent": args.concurrency},
                "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0},
                "parameters": {"train.seed": {"grid": seeds}}}
        (tmp / "overhead.yaml").write_text(yaml.safe_dump(spec))
        start = time.perf_counter()
        outcome = run_search(SearchRequest(file=tmp / "overhead.yaml", project_dir=tmp / "project",
                                           stream=io.StringIO()))
        search_wall = time.perf_counter() - start
        trial_sum = outcome.summary["trial_s_sum"]

        from dcell_core.config import cache_dir, compose

        jobs = [([*overrides, f"train.seed={s}", f"cache_dir={cache_dir(compose([]))}"], str(tmp / f"plain{s}"))
                for s in seeds]
        start = time.perf_counter()
        with ProcessPoolExecutor(args.concurrency) as pool:
            plain_times = list(pool.map(_plain_trial, jobs))
        plain_wall = time.perf_counter() - start

    bound = 1.15 * trial_sum / args.concurrency + 20
    result = {
        "machine": f"{os.cpu_count()} cores", "trials": args.trials, "epochs": args.epochs,
        "concurrency": args.concurrency, "complete": outcome.complete,
        "search_wall_s": round(search_wall, 1), "search_trial_s_sum": round(trial_sum, 1),
        "search_overhead_s": round(search_wall - trial_sum / args.concurrency, 1),
        "plain_wall_s": round(plain_wall, 1), "plain_trial_s_sum": round(sum(plain_times), 1),
        "search_over_plain": round(search_wall / plain_wall, 2),
        "bound_s": round(bound, 1), "meets_target": search_wall <= bound,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print("| " + " | ".join(result) + " |")
    print("|" + "---|" * len(result))
    print("| " + " | ".join(str(v) for v in result.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
