"""`python -m benchmarks.ontology [--json] [--repeats N]`: building hierarchies cold vs from the cache.

For each data config: the cold build (parse OBO with goatools, read annotations, filter, validate) and the
cache hit (fingerprint the inputs, read and validate the cached hierarchy), median of N runs in this process,
plus one end-to-end CLI run of each in a fresh interpreter (imports included). Targets for yeast_go on a
2-core machine: cold < 10 s, cache < 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"yeast_go": {"cold_s": 10.0, "cache_s": 1.0}}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cli_seconds(name: str, cache: Path, no_cache: bool) -> float:
    env = {**os.environ, "DCELL_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "dcell_core.ontology", f"data={name}", "--json"] + (["--no-cache"] if no_cache else [])
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    return f"{os.cpu_count()} cores, {model}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", nargs="*", default=["yeast_go", "yeast_dna_repair", "yeast_cell_cycle"])
    args = ap.parse_args(argv)

    from dcell_core.config import compose, ontology_config
    from dcell_core.ontology import build_hierarchy, load_hierarchy

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for name in args.data:
            cfg = ontology_config(compose([f"data={name}"]))
            cold = timed(lambda: build_hierarchy(cfg), args.repeats)
            h = load_hierarchy(cfg, cache)  # fills the cache
            hit = timed(lambda: load_hierarchy(cfg, cache), args.repeats)
            row = {"data": name, "terms": h.num_terms, "cold_s": round(cold, 3), "cache_s": round(hit, 4),
                   "cold_over_cache": round(cold / hit, 1),
                   "cli_cold_s": round(cli_seconds(name, cache, True), 2),
                   "cli_cache_s": round(cli_seconds(name, cache, False), 2)}
            if name in TARGETS:
                row["meets_targets"] = cold < TARGETS[name]["cold_s"] and hit < TARGETS[name]["cache_s"]
            rows.append(row)
    result = {"machine": machine(), "repeats": args.repeats, "targets": TARGETS, "rows": rows}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"machine: {result['machine']}; median of {args.repeats} in-process runs; CLI = one fresh interpreter")
    head = ["data", "terms", "cold_s", "cache_s", "cold_over_cache", "cli_cold_s", "cli_cache_s", "meets_targets"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in head) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
