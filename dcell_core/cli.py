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
