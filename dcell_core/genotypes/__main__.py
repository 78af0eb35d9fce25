"""`python -m dcell_core.genotypes [hydra overrides] [--json]`

What the composed data config's genotypes load as, exactly as a run sees them (load_run_data: the hierarchy,
then the dataset, both through the cache): rows, distinct genes, rows by number of disrupted genes, the
phenotype's mean and standard deviation, rows dropped and why (unknown genes, neutral markers, filters,
missing values), repeated genotypes, split sizes; for simulated data the `simulation` statistics (truth_mismatch,
frac_abs_eps_gt_0.08, positive_share, noise_ceiling_pearson, ...; docs/genotypes.md). `--json` prints one object
with at least `rows`, `genes`, `by_order`, `dropped`, `phenotype` and `simulation` (null for files). Bad overrides, missing or malformed files exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from dcell_core.cli import compose_or_exit, fail_usage

REPEAT_KEYS = ("repeats", "repeated_genotypes", "repeated_rows", "repeats_mixing_alleles",
               "repeats_mixing_temperature", "repeats_mixing_mutant_type", "averaged_rows", "averaged_genotypes")


def summarize(dataset, hierarchy_genes: int) -> dict:
    """The summary of a GenotypeDataset (see the module docstring)."""
    stats = dataset.meta.get("stats", {})
    orders = np.bincount(np.diff(dataset.offsets))
    values = dataset.phenotypes.astype(np.float64).reshape(len(dataset), -1)[:, 0]
    return {
        "rows": len(dataset),
        "genes": int(np.unique(dataset.gene_indices).size),
        "hierarchy_genes": hierarchy_genes,
        "by_order": {str(k): int(n) for k, n in enumerate(orders) if n},
        "dropped": {key[len("dropped_"):]: int(n) for key, n in sorted(stats.items()) if key.startswith("dropped_")},
        "phenotype": {"name": dataset.phenotype_names[0], "mean": float(values.mean()),
                      "std": float(values.std()), "min": float(values.min()), "max": float(values.max())},
        "repeats": {k: stats[k] for k in REPEAT_KEYS if k in stats},
        "splits": {name: int(len(rows)) for name, rows in dataset.splits.items()},
        "measurements": None if dataset.measurements is None else int(dataset.measurements.sum()),
        "simulation": stats.get("simulation"),
        "stats": {k: v for k, v in stats.items() if k != "simulation"},
        "cache": dataset.meta.get("cache"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcell_core.genotypes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*",
                    help="Hydra overrides, e.g. data=kuzmin2018 data.genotypes.phenotype=pvalue")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    from dcell_core.data import load_run_data

    cfg = compose_or_exit(args.overrides)
    start = time.perf_counter()
    try:
        run = load_run_data(cfg)
    except (FileNotFoundError, ValueError) as e:  # missing or bad files, invalid settings: one message, exit 2
        return fail_usage(str(e))
    summary = {"data": cfg.data.name, "source": cfg.data.genotypes.source,
               "files": run.dataset.meta.get("source_path"),
               **summarize(run.dataset, run.hierarchy.num_genes), "seconds": round(time.perf_counter() - start, 3)}
    if args.json:
        print(json.dumps(summary))
        return 0
    _print_text(summary)
    return 0


def _print_text(s: dict) -> None:
    files = s["files"] if isinstance(s["files"], list) else [s["files"]] if s["files"] else []
    print(f"data            {s['data']}  (source {s['source']}{': ' + ', '.join(files) if files else ''})")
    origin = "read from the dataset cache" if s["cache"] == "hit" else "read from the files, now cached"
    print(f"rows            {s['rows']:,}  ({origin})")
    print(f"genes           {s['genes']:,} disrupted, of {s['hierarchy_genes']:,} in the hierarchy")
    print("by order        " + ", ".join(f"{k} gene{'s' if k != '1' else ''}: {n:,}" for k, n in s["by_order"].items()))
    p = s["phenotype"]
    print(f"phenotype       {p['name']}: mean {p['mean']:.4f}, std {p['std']:.4f}, range [{p['min']:.4f}, "
          f"{p['max']:.4f}]")
    print("dropped         " + (", ".join(f"{k} {n:,}" for k, n in s["dropped"].items()) or "none"))
    if s["repeats"]:
        print("repeats         " + ", ".join(f"{k} {v}" for k, v in s["repeats"].items()))
    print("splits          " + ", ".join(f"{k} {n:,}" for k, n in s["splits"].items()))
    sim = s["simulation"]
    if sim:
        print(f"simulation      {sim['simulator']}: truth mismatch {sim['truth_mismatch']:.3f}; doubles with |eps| > "
              f"0.08: {_share(sim['frac_abs_eps_gt_0.08'])}, positive {_share(sim['positive_share'])}; near-lethal "
              f"singles (F < 0.2) {sim['single_near_lethal_share']:.1%}; noise ceiling Pearson (val) "
              + ("n/a" if sim["noise_ceiling_pearson"] is None else f"{sim['noise_ceiling_pearson']:.3f}"))
    print(f"loaded in       {s['seconds']:.2f} s")


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())
