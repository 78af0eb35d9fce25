"""Shared command-line plumbing: CLI misuse prints one clear message and exits with status 2."""
from __future__ import annotations

import sys
from typing import NoReturn, Sequence

from omegaconf import DictConfig

USAGE_EXIT = 2


def fail_usage(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def compose_or_exit(overrides: Sequence[str]) -> DictConfig:
    """Compose the config; a bad override or unknown key exits 2 with Hydra's message and its cause."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dcell_core.config import compose

    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        cause = f"\n  cause: {e.__cause__}" if e.__cause__ is not None else ""
        fail_usage(f"bad config override(s) {list(overrides)}: {e}{cause}")


def add_search_store_arguments(ap) -> None:
    """The arguments that name a recorded search and reach its store (platform.promote, platform.report)."""
    from pathlib import Path

    ap.add_argument("search", help="parent run id, search name, or search-space name (its latest search)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db in the project directory)")
    ap.add_argument("--project-dir", type=Path, default=Path.cwd(),
                    help="where mlflow.db and mlartifacts/ live (default: the working directory)")
