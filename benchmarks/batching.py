"""`python -m benchmarks.batching [--json] [--repeats N]`: assembling dense disruption batches.

Builds a synthetic hierarchy over ~6,000 genes, simulates ~100k genotypes (singles, doubles, triples) with
dcell_core.genotypes.simulate, then times turning 256 random sample indices into the dense [256, n_genes]
float32 0/1 matrix plus targets: the vectorized scatter (fresh tensor, and into a reused buffer) against a
naive per-sample Python loop, side by side in this process, median of N repeats each. Target: < 1 ms per
batch of 256 on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from dcell_core.genotypes import GenotypeBatcher, GenotypeConfig, simulate_genotypes
from dcell_core.ontology.hierarchy import Hierarchy

TARGET_MS = 1.0


def synthetic_hierarchy(num_genes: int, leaf_size: int = 6, fan_in: int = 5, seed: int = 0) -> Hierarchy:
    """Random tree: leaves of `leaf_size` genes, parents of `fan_in` children each, up to one root."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:05d}" for i in rng.permutation(num_genes)]
    level = [f"T0_{i}" for i in range((num_genes + leaf_size - 1) // leaf_size)]
    direct = {t: genes[i * leaf_size:(i + 1) * leaf_size] for i, t in enumerate(level)}
    children: dict[str, list[str]] = {}
    depth = 0
    while len(level) > 1:
        depth += 1
        parents = [f"T{depth}_{i}" for i in range((len(level) + fan_in - 1) // fan_in)]
        for i, parent in enumerate(parents):
            children[parent] = level[i * fan_in:(i + 1) * fan_in]
        level = parents
    return Hierarchy.from_mappings(children, direct, provenance={"fingerprint": f"synthetic-{num_genes}-{seed}"})


def naive_matrix(gene_indices: np.ndarray, offsets: np.ndarray, rows: np.ndarray, num_genes: int) -> torch.Tensor:
    """Baseline: one Python iteration per sample, filling its row."""
    genes = torch.from_numpy(gene_indices)
    out = torch.zeros(len(rows), num_genes)
    for b, r in enumerate(rows.tolist()):
        out[b, genes[offsets[r]:offsets[r + 1]]] = 1.0
    return out


def median_ms(fn, draws: list[np.ndarray]) -> float:
    times = []
    for rows in draws:
        start = time.perf_counter()
        fn(rows)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    return {"nproc": os.cpu_count(), "cpu": model, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--repeats", type=int, default=500, help="batches timed per method (naive: a fifth)")
    ap.add_argument("--genes", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args(argv)

    start = time.perf_counter()
    hierarchy = synthetic_hierarchy(args.genes)
    cfg = GenotypeConfig(num_singles=-1, num_doubles=74_000, num_triples=20_000, seed=0)
    sim = simulate_genotypes(hierarchy, cfg)
    build_s = time.perf_counter() - start
    batcher = GenotypeBatcher(sim.gene_indices, sim.offsets, sim.fitness, hierarchy.num_genes)
    n_rows, bs = len(sim.offsets) - 1, args.batch_size
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, n_rows, bs) for _ in range(args.repeats)]
    check = draws[0]
    assert torch.equal(batcher.matrix(check), naive_matrix(sim.gene_indices, sim.offsets, check, hierarchy.num_genes))
    targets = torch.from_numpy(sim.fitness.astype(np.float32))
    buffer = torch.empty(bs, hierarchy.num_genes)
    for rows in draws[:20]:  # warm-up (allocator, caches)
        batcher.batch(rows)
    results = {
        "scatter_ms": median_ms(lambda r: batcher.batch(r), draws),
        "scatter_reused_buffer_ms": median_ms(lambda r: batcher.batch(r, out=buffer), draws),
        "naive_loop_ms": median_ms(
            lambda r: (naive_matrix(sim.gene_indices, sim.offsets, r, hierarchy.num_genes), targets[r]),
            draws[: max(1, args.repeats // 5)]),
    }
    results["naive_over_scatter"] = results["naive_loop_ms"] / results["scatter_ms"]
    report = {"genotypes": n_rows, "genes": hierarchy.num_genes, "terms": hierarchy.num_terms,
              "mean_genes_per_genotype": float(np.diff(sim.offsets).mean()), "batch_size": bs,
              "repeats": args.repeats, "build_dataset_s": build_s, **results,
              "target_ms": TARGET_MS, "meets_target": results["scatter_ms"] < TARGET_MS, "machine": machine()}
    if args.json:
        print(json.dumps(report))
        return 0
    m = report["machine"]
    print(f"{n_rows} genotypes over {hierarchy.num_genes} genes ({hierarchy.num_terms} terms), batch {bs}, "
          f"median of {args.repeats} batches (naive: {max(1, args.repeats // 5)}); simulated in {build_s:.1f} s")
    print(f"machine: nproc {m['nproc']}, {m['cpu']}, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"| method | ms / batch of {bs} |\n|---|---|")
    print(f"| vectorized scatter (new tensor) | {results['scatter_ms']:.3f} |")
    print(f"| vectorized scatter (reused buffer) | {results['scatter_reused_buffer_ms']:.3f} |")
    print(f"| naive per-sample loop | {results['naive_loop_ms']:.3f} |")
    print(f"naive / scatter = {results['naive_over_scatter']:.1f}x; target < {TARGET_MS} ms: "
          f"{'met' if report['meets_target'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
