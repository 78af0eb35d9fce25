"""`python -m platform.report SEARCH [--output FILE] [--tracking-uri URI] [--project-dir DIR]`: the HTML report of a
search, written from its MLflow record (the same report every search writes when it ends and logs to its parent
run as report.html).

SEARCH is a parent run id, a search name (e.g. norms-20250101-120000) or a search-space name (its latest search),
as for platform.promote. The report is one self-contained HTML file (open it in any browser, no network needed):
the ranked trials, each parameter's effect and whether it is resolved, learning curves with ASHA's stops,
parallel coordinates, importances, collapse flags and the winner's plots (docs/searching.md, "The report").
Exit status: 0 written, 2 bad input (no such store or search).
"""
import argparse
import os
import sys
from pathlib import Path

from dcell_core.cli import USAGE_EXIT, add_search_store_arguments


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m platform.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_search_store_arguments(ap)
    ap.add_argument("--output", type=Path, help="the HTML file to write (default: <search name>.report.html in the "
                                                "working directory)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna

    from dcell_core.search import ledger, report
    from dcell_core.serving.selection import PromotionError, metric_and_mode, open_store, resolve_search, tracking_uri_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study" lines from the importances
    try:
        client = open_store(tracking_uri_for(args.tracking_uri, args.project_dir))
        parent = resolve_search(client, args.search)
        metric, mode = metric_and_mode(parent, None, None)
        parameters = report.search_parameters(client, parent)
    except (PromotionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    name = parent.data.tags.get(ledger.TAG_SEARCH, parent.info.run_id)
    output = args.output or Path.cwd() / f"{name}.report.html"
    path = report.write(client, parent.info.run_id, metric, mode, parameters, output)
    print(f"report of search {name} (parent run {parent.info.run_id}, {parent.info.status}): {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
