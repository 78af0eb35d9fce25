"""`python -m platform.search FILE [options] [hydra overrides ...]`: a Ray Tune search recorded in MLflow.

Exit status: 0 the search completed and has a winner; 1 it completed without a winner, was interrupted (the
command that continues it is printed) or crashed (its parent run is FAILED with the reason); 2 usage or input
error, before anything was recorded. The table is in docs/searching.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcell_core.cli import USAGE_EXIT


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m platform.search",
        description="Search DCell architecture choices: Ray Tune trials (Optuna TPE + ASHA by default) over a "
                    "search-space file, every trial recorded as an MLflow child run of one parent run.")
    ap.add_argument("file", type=Path, help="search-space YAML, e.g. search_spaces/norms.yaml")
    ap.add_argument("overrides", nargs="*", help="extra fixed Hydra overrides for every trial (train.epochs=3 ...)")
    ap.add_argument("--num-samples", type=int, help="number of trials (default: the file's search.num_samples)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: the file's search.max_concurrent)")
    ap.add_argument("--replicates", type=int, help="seeds each trial trains, its score their mean (default: the "
                                                   "file's replicates, 1)")
    ap.add_argument("--address", help="existing Ray cluster, e.g. auto on its head node (default: a local Ray); "
                                      "with more than one node it needs an MLflow server as --tracking-uri and a "
                                      "--project-dir on storage every node shares (docs/cluster.md)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI: http://<server>:<port> for an MLflow server "
                                           "(default: sqlite mlflow.db in the project directory, one machine only)")
    ap.add_argument("--name", help="name of this search run (default: <search name>-<timestamp>); with --resume, "
                                   "the search to continue")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted search (the latest one of this file, or --name); it keeps its "
                         "overrides, --num-samples and --replicates (other values are refused), takes new "
                         "--max-concurrent and --max-failures, and a new --tracking-uri only when it reaches the "
                         "search's own store")
    ap.add_argument("--project-dir", type=Path, default=Path.cwd(),
                    help="where mlflow.db, mlartifacts/ and ray_results/ live (default: the working directory); on "
                         "a cluster, a directory every node shares (NFS, EFS, Filestore, a ReadWriteMany volume)")
    ap.add_argument("--max-failures", type=int,
                    help="retries of a crashed trial from its checkpoint (default 2; with --resume: the search's own)")
    ap.add_argument("--verbose", action="store_true", help="also show Ray's, Tune's, Optuna's and MLflow's own "
                                                           "console lines and the trial workers' output")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    if not args.file.is_file():
        print(f"error: search-space file not found: {args.file}", file=sys.stderr)
        return USAGE_EXIT
    for flag, least in (("num_samples", 1), ("max_concurrent", 1), ("replicates", 1), ("max_failures", 0)):
        value = getattr(args, flag)
        if value is not None and value < least:
            print(f"error: --{flag.replace('_', '-')} must be >= {least}, got {value}", file=sys.stderr)
            return USAGE_EXIT
    from dcell_core.search.cluster import ClusterMismatch
    from dcell_core.search.driver import SearchRequest, SearchUsageError, run_search, sigterm_as_interrupt
    from dcell_core.search.tracking import TrackingUnavailable

    req = SearchRequest(file=args.file, overrides=list(args.overrides), num_samples=args.num_samples,
                        max_concurrent=args.max_concurrent, replicates=args.replicates, address=args.address,
                        tracking_uri=args.tracking_uri, name=args.name, resume=args.resume,
                        project_dir=args.project_dir, max_failures=args.max_failures, verbose=args.verbose)
    sigterm_as_interrupt()
    try:
        outcome = run_search(req)
    except (SearchUsageError, TrackingUnavailable, ClusterMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:  # outside Tune's own handling; the parent run is already KILLED
        return 1
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
