"""`python -m platform.promote SEARCH [--metric M] [--mode max|min] [--model-name dcell] [--alias production]
[--dest DIR] [--force] [--allow-running] [--tracking-uri URI] [--project-dir DIR]`: the winner of a search
becomes the production model.

SEARCH is a parent run id, a search name (e.g. norms-20250101-120000) or a search-space name (its latest
search). The search must be FINISHED (--allow-running takes the current winner of one that is not). Its winner
(the FINISHED trial with the best metric at its last epoch, docs/searching.md; default: the search's own metric
and mode) is registered in the MLflow Model Registry, the alias is moved to it, and its production checkpoint is
installed at --dest (default <project-dir>/checkpoints/production, a link to a versioned directory; the previous
one stays as DEST.prev).
Exit status: 0 promoted (or already production), 1 nothing promoted (the search is not finished, it has no
winner, or the alias holds a model at least as good: --force replaces it), 2 bad input. See docs/promotion.md.
"""
import argparse
import os
import sys
from pathlib import Path

from dcell_core.cli import USAGE_EXIT, add_search_store_arguments


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m platform.promote", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_search_store_arguments(ap)
    ap.add_argument("--metric", help="metric that ranks the trials (default: the search's metric)")
    ap.add_argument("--mode", choices=("max", "min"), help="max or min (default: the search's mode)")
    ap.add_argument("--model-name", default="dcell", help="registered model name (default: dcell)")
    ap.add_argument("--alias", default="production", help="registry alias to move (default: production)")
    ap.add_argument("--dest", type=Path, help="checkpoint link to install (default: "
                                              "<project-dir>/checkpoints/production)")
    ap.add_argument("--force", action="store_true", help="move the alias even when it holds a better model or one "
                                                          "of another metric or hierarchy")
    ap.add_argument("--allow-running", action="store_true",
                    help="promote from a search that is not FINISHED (running, interrupted or failed): its current "
                         "winner, which may still change")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from dcell_core.serving.checkpoint import CheckpointError
    from dcell_core.serving.install import InstallError
    from dcell_core.serving.promote import PromoteRequest, promote
    from dcell_core.serving.registry import PromotionRefused
    from dcell_core.serving.selection import NothingToPromote, PromotionError

    req = PromoteRequest(search=args.search, metric=args.metric, mode=args.mode, model_name=args.model_name,
                         alias=args.alias, dest=args.dest, tracking_uri=args.tracking_uri,
                         project_dir=args.project_dir, force=args.force, allow_running=args.allow_running)
    try:
        promote(req)
    except (PromotionError, InstallError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    except (PromotionRefused, NothingToPromote, CheckpointError) as e:
        print(f"not promoted: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
