"""How well models can do on a data config: test Pearson of the per-gene baselines, of DCell, and the noise ceiling.

    python -m benchmarks.simulated_screen [hydra overrides] [--json]

For the composed config (default: the demo, DNA repair with the simulated screen; the model, loss and training
settings are the config's own, the paper's by default): the additive and multiplicative per-gene baselines
(dcell_core.train.baselines, fitted on the train split), DCell trained for train.epochs and evaluated on the test
split at its last epoch, and for simulated data the noise ceiling (Pearson of the noise-free truth against the
measurement on the test split: the best any model can reach). Prints a table with the CPU model, or one JSON
object with --json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

from benchmarks.model import cpu_model
from dcell_core.cli import compose_or_exit


def evaluate(cfg, out_dir: str | None = None) -> dict:
    from dcell_core.genotypes import simulate_genotypes
    from dcell_core.train.baselines import fit_baselines
    from dcell_core.train.loop import Training, predict
    from dcell_core.train.metrics import regression_metrics
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as scratch:
        run = Training(cfg, out_dir or scratch)
        started = time.perf_counter()
        history = [m for m, _ in run.epochs()]
        train_s = time.perf_counter() - started
        test = run.data.dataset.splits["test"]
        pred, target = predict(run.model, run.batcher, test, run.t.eval_batch_size, run.device, run.autocast)
    dataset, hierarchy = run.data.dataset, run.data.hierarchy
    rows = {"dcell": {"val/pearson": history[-1]["val/pearson"], "test/pearson": regression_metrics(pred, target)["pearson"]}}
    for kind, result in fit_baselines(dataset).items():
        rows[kind] = {"val/pearson": result["val/pearson"], "test/pearson": result["test/pearson"]}
    gcfg = OmegaConf.to_object(cfg.data.genotypes)
    out = {"data": cfg.data.name, "rows": len(dataset), "genes": hierarchy.num_genes, "terms": hierarchy.num_terms,
           "epochs": len(history), "train_s": round(train_s, 1), "cpu": cpu_model(), "models": rows,
           "simulation": dataset.meta.get("stats", {}).get("simulation")}
    if gcfg.source == "simulate":  # the ceiling on the test split: the noise-free truth against the measurement
        sim = simulate_genotypes(hierarchy, gcfg, cfg.base_dir)
        out["noise_ceiling_test_pearson"] = float(np.corrcoef(sim.fitness_true[test], sim.fitness[test])[0, 1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulated_screen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=yeast_go train.epochs=5")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--out", help="keep DCell's run directory here (metrics.jsonl after every epoch, checkpoints); "
                                  "default: a temporary one")
    args = ap.parse_args(argv)
    result = evaluate(compose_or_exit(["train.plots=false", *args.overrides]), args.out)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['data']}: {result['rows']:,} genotypes, {result['genes']:,} genes, {result['terms']:,} terms; "
          f"DCell {result['epochs']} epochs in {result['train_s']:.0f} s on {result['cpu']}")
    print(f"{'model':<16} {'val Pearson':>12} {'test Pearson':>13}")
    for name, r in result["models"].items():
        print(f"{name:<16} {r['val/pearson']:>12.3f} {r['test/pearson']:>13.3f}")
    if "noise_ceiling_test_pearson" in result:
        print(f"{'noise ceiling':<16} {'':>12} {result['noise_ceiling_test_pearson']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
