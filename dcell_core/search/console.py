"""A quiet console: the platform's own progress and summary, not the libraries' banners.

Hidden unless `--verbose`: Ray's start-up lines and token-authentication notices, Tune's configuration box, its
results-directory and TensorBoard hints and its state-file lines, Optuna's "new study" lines, MLflow's
database-creation lines. Warnings and errors of every library still show.
"""
from __future__ import annotations

import logging
import os

# Ray logs the token notices at WARNING though they describe the default, working set-up.
_RAY_NOTICES = ("ray._private.authentication.authentication_token_setup",)


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def quiet_console(verbose: bool) -> None:
    """Set the libraries' console output for one driver process (call before Ray, Tune or Optuna start)."""
    if verbose:
        return
    # Tune's newer console reporter prints the configuration box and the hints with print(), whatever its
    # verbosity; with this documented switch Tune uses its older reporter, which at verbose=0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Tune's advice to checkpoint less often: every epoch of a trial is checkpointed on purpose (resume, promotion).
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    # MLflow's download progress bars (the report reads the winner's plots back from the store).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("ray", "ray.tune", "ray.train", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _RAY_NOTICES:
        logging.getLogger(name).addFilter(_Drop())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
