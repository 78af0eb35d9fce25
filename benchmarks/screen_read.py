"""`python -m benchmarks.screen_read [--rows N] [--json] [--dir DIR]`: reading the full Costanzo 2016 release.

Writes a synthetic file set in the release format (SGA_ExE.txt, SGA_NxN.txt, SGA_ExN_NxE.txt: the 11 tab-separated
columns with the ε header, CRLF-free as released) with N rows in total (default 20 million, the size of the three
pair-wise files together) split like the release (ExE 0.82 M, NxN 12.7 M, ExN_NxE the rest of 20 M): ~6,000 ORFs,
deletion query / array strains (`_sn`, `_dma`), temperature-sensitive alleles (`_tsq`, `_tsa`), DAmP strains,
both temperatures, one missing p-value in a thousand. Then a fresh child interpreter reads the set with
`read_sga` (the gene check against every ORF included, as a dataset build does) and builds the dataset arrays
(repeats counted, CSR gene indices, splits); it reports each step's time and its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, so the writer's memory does not count). The budget is 24 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET_GIB = 24.0
RELEASE_ROWS = {"SGA_ExE.txt": 820_000, "SGA_NxN.txt": 12_700_000, "SGA_ExN_NxE.txt": 6_480_000}  # ~20 M in all
HEADER = ["Query Strain ID", "Query allele name", "Array Strain ID", "Array allele name", "Arraytype/Temp",
          "Genetic interaction score (ε)", "P-value", "Query single mutant fitness (SMF)", "Array SMF",
          "Double mutant fitness", "Double mutant fitness standard deviation"]
WRITE_CHUNK = 250_000


def split_rows(total: int) -> dict[str, int]:
    """Rows per file in the release's proportions, summing to `total`."""
    whole = sum(RELEASE_ROWS.values())
    counts = {name: total * n // whole for name, n in RELEASE_ROWS.items()}
    counts["SGA_NxN.txt"] += total - sum(counts.values())
    return counts


class StrainPools:
    """Synthetic strains of the release's kinds: per kind, strain ids and allele names as Python strings."""

    def __init__(self, rng: np.random.Generator, nonessential: int = 4800, essential: int = 1200) -> None:
        orfs = [f"Y{c}{arm}{i:03d}{w}" for c in "ABCDEFGHIJKLMNOP" for arm in "LR" for i in range(1, 200)
                for w in "WC"]
        chosen = rng.choice(len(orfs), nonessential + essential, replace=False)
        self.orfs = [orfs[i] for i in chosen]
        non, ess = self.orfs[:nonessential], self.orfs[nonessential:]
        gene = {orf: f"g{k}" for k, orf in enumerate(self.orfs)}
        self.kinds = {
            "sn": [(f"{o}_sn{k}", gene[o]) for k, o in enumerate(non[: nonessential * 3 // 4])],
            "dma": [(f"{o}_dma{k}", gene[o]) for k, o in enumerate(non)],
            "tsq": [(f"{o}_tsq{k}", f"{gene[o]}-{a}") for k, o in enumerate(ess) for a in range(1 + k % 2)],
            "tsa": [(f"{o}_tsa{k}", f"{gene[o]}-{a}") for k, o in enumerate(ess) for a in range(1 + k % 2)],
            "damp": [(f"{o}_damp{k}", f"{gene[o]}-damp") for k, o in enumerate(ess[::4])],
        }

    def draw(self, rng: np.random.Generator, kinds: tuple[str, ...], n: int) -> list[str]:
        """n cells "strain\\tallele" drawn from the pooled strains of `kinds`."""
        pool = [f"{s}\t{a}" for kind in kinds for s, a in self.kinds[kind]]
        return [pool[i] for i in rng.integers(0, len(pool), n).tolist()]


FILE_DESIGN = {  # query kinds, array kinds, Arraytype/Temp values
    "SGA_ExE.txt": (("tsq", "damp"), ("tsa",), ("TSA26",)),
    "SGA_NxN.txt": (("sn",), ("dma",), ("DMA30",)),
    "SGA_ExN_NxE.txt": (("tsq", "sn"), ("dma", "tsa"), ("DMA26", "TSA26", "TSA30")),
}


def write_release(directory: Path, total: int, seed: int = 0) -> tuple[list[Path], list[str]]:
    """The synthetic release files, in read order (values drawn from pools of formatted numbers), and the ORFs."""
    rng = np.random.default_rng(seed)
    pools = StrainPools(rng)
    numbers = {
        "eps": [f"{v:.4f}" for v in rng.normal(0.0, 0.08, 50_000)],
        "p": [f"{v:.3g}" for v in rng.random(50_000)] + [""] * 50,  # one missing p-value in ~1,000
        "fit": [f"{v:.4f}" for v in rng.uniform(0.3, 1.1, 50_000)],
        "std": [f"{v:.4f}" for v in rng.uniform(0.0, 0.12, 50_000)],
    }
    paths = []
    for name, n in split_rows(total).items():
        query_kinds, array_kinds, temps = FILE_DESIGN[name]
        path = directory / name
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\t".join(HEADER) + "\n")
            for start in range(0, n, WRITE_CHUNK):
                m = min(WRITE_CHUNK, n - start)
                cols = [pools.draw(rng, query_kinds, m), pools.draw(rng, array_kinds, m),
                        [temps[i] for i in rng.integers(0, len(temps), m).tolist()]]
                for key in ("eps", "p", "fit", "fit", "fit", "std"):
                    pool = numbers[key]
                    cols.append([pool[i] for i in rng.integers(0, len(pool), m).tolist()])
                handle.write("".join("\t".join(r) + "\n" for r in zip(*cols)))
        paths.append(path)
    return paths, pools.orfs


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def child(directory: str) -> dict:
    """Read the set (in a fresh interpreter) and build the dataset arrays; time and peak memory per step."""
    from dcell_core.genotypes import apply_repeats, read_sga
    from dcell_core.genotypes.dataset import table_csr
    from dcell_core.genotypes.splits import split_rows as deal_splits

    files = [Path(directory) / name for name in RELEASE_ROWS]
    known = {line.strip() for line in open(Path(directory) / "orfs.txt")}
    baseline = peak_gib()
    start = time.perf_counter()
    table = read_sga(files, known)
    read_s, read_peak = time.perf_counter() - start, peak_gib()
    start = time.perf_counter()
    table = apply_repeats(table, "keep")
    gene_index = {g: i for i, g in enumerate(sorted(known))}
    gene_indices, offsets = table_csr(table, gene_index)
    splits = deal_splits(gene_indices, offsets, 0.1, 0.1, 0)
    dataset_s, dataset_peak = time.perf_counter() - start, peak_gib()
    stats = table.stats
    return {"rows": len(table), "read_s": read_s, "read_peak_gib": read_peak, "dataset_s": dataset_s,
            "dataset_peak_gib": dataset_peak, "baseline_gib": baseline,
            "repeated_genotypes": stats["repeated_genotypes"], "split_sizes": {k: len(v) for k, v in splits.items()},
            "dropped": {k: v for k, v in stats.items() if k.startswith("dropped_")},
            "table_mib": (table.data.memory_usage(deep=False).sum() + table.genes.nbytes) / 2**20}


def machine() -> dict:
    import pandas

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "numpy": np.__version__, "pandas": pandas.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000_000, help="rows in the three files together")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--dir", help="write the files here and keep them (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: read DIR and print the measurements
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.rows < len(RELEASE_ROWS):
        ap.error(f"--rows must be at least {len(RELEASE_ROWS)}")
    with tempfile.TemporaryDirectory(prefix="screen_read_") as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        paths, orfs = write_release(directory, args.rows, args.seed)
        (directory / "orfs.txt").write_text("\n".join(orfs) + "\n")
        write_s = time.perf_counter() - start
        size_gib = sum(p.stat().st_size for p in paths) / 2**30
        run = subprocess.run([sys.executable, "-m", "benchmarks.screen_read", "--child", str(directory)],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        measured = json.loads(run.stdout)
    report = {"rows_written": args.rows, "files": {p.name: n for p, n in zip(paths, split_rows(args.rows).values())},
              "size_gib": size_gib, "write_s": write_s, **measured,
              "children_peak_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
              "budget_gib": BUDGET_GIB, "machine": machine()}
    report["within_budget"] = max(report["read_peak_gib"], report["dataset_peak_gib"]) < BUDGET_GIB
    if args.json:
        print(json.dumps(report))
        return 0
    m, n = report["machine"], report["rows"]
    print(f"{args.rows:,} rows in {len(paths)} files ({size_gib:.2f} GiB, written in {write_s:.0f} s); "
          f"machine: nproc {m['nproc']}, {m['cpu']}, Python {m['python']}, pandas {m['pandas']}, numpy {m['numpy']}")
    print("| step | seconds | rows / s | peak RSS (GiB) |\n|---|---|---|---|")
    print(f"| interpreter and imports | | | {report['baseline_gib']:.2f} |")
    print(f"| read_sga (3 files, gene check) | {report['read_s']:.1f} | {n / report['read_s']:,.0f} | "
          f"{report['read_peak_gib']:.2f} |")
    print(f"| dataset arrays (repeats, CSR, splits) | {report['dataset_s']:.1f} | {n / report['dataset_s']:,.0f} | "
          f"{report['dataset_peak_gib']:.2f} |")
    print(f"table in memory: {report['table_mib']:,.0f} MiB for {n:,} rows; budget {BUDGET_GIB:.0f} GiB: "
          f"{'within' if report['within_budget'] else 'EXCEEDED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
