"""Driver-side Tune callback: live progress lines and true MLflow statuses for trials that Tune ended.

A trial that finishes its epochs marks its own run FINISHED; a trial that raises marks it FAILED. What a trial
cannot do is record that the scheduler stopped it (its worker is stopped mid-run): that is done here, on the
driver, when Tune reports the trial complete while its run is still RUNNING.
"""
from __future__ import annotations

import math
import sys
import time

from ray import tune

from dcell_core.search import tracking

TAG_RETRIES = "dcell.retries"  # how often Tune restarted the trial after a crash


class SearchProgress(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str,
                 epochs: int, total: int, stream=sys.stdout, min_interval_s: float = 5.0):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self.metric, self.mode, self.epochs, self.total = metric, mode, epochs, total
        self.stream, self.min_interval_s = stream, min_interval_s
        self.best: tuple[float, str] | None = None
        self.outcome: dict[str, str] = {}  # trial id -> finished | stopped | failed
        self.trials: list = []
        self._last_print = 0.0

    # Tune pickles its run config (callbacks included) and Tuner.restore brings this object back: leave the
    # client and the stream out of the pickle and make them anew.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("client", "stream", "trials")}

    def __setstate__(self, state):
        self.__dict__.update(state, trials=[], stream=sys.stdout,
                             client=tracking.MlflowClient(tracking_uri=state["tracking_uri"]))

    # ---- Tune hooks -------------------------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.trials = trials
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and not math.isnan(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial.trial_id)
        self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.trials = trials
        run = tracking.find_child_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        epoch = int((trial.last_result or {}).get("epoch", 0))
        if run is not None and run.info.status == "RUNNING":
            if epoch >= self.epochs:
                self.client.set_terminated(run.info.run_id, "FINISHED")  # stopped right at its last epoch
            else:
                tracking.set_tags(self.client, run.info.run_id, {tracking.TAG_STOPPED: "true",
                                                                   "dcell.stopped_at_epoch": epoch})
                self.client.set_terminated(run.info.run_id, "KILLED")
        status = self.client.get_run(run.info.run_id).info.status if run is not None else "no run"
        self.outcome[trial.trial_id] = {"FINISHED": "finished", "KILLED": "stopped"}.get(status, "failed")
        self._print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.trials = trials
        run = tracking.find_child_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run is not None and run.info.status == "RUNNING":  # the worker died before the trial could say so
            tracking.set_tags(self.client, run.info.run_id, {tracking.TAG_ERROR: _error_text(trial)})
            self.client.set_terminated(run.info.run_id, "FAILED")
        self.outcome[trial.trial_id] = "failed"
        self._print(trials, force=True)
        print(f"  trial {trial.trial_id} failed: {_error_text(trial)}", file=self.stream, flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A crashed trial (its node lost, its worker killed) that Tune starts again from its last checkpoint: its
        run stays RUNNING and records the attempt; the trial sets its new node when it starts."""
        self.trials = trials
        error = _error_text(trial)
        run = tracking.find_child_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run is not None:
            tracking.set_tags(self.client, run.info.run_id, {TAG_RETRIES: trial.num_failures,
                                                             "dcell.last_failure": error})
        print(f"  trial {trial.trial_id} crashed ({error}); retry {trial.num_failures} from its last checkpoint",
              file=self.stream, flush=True)

    def on_experiment_end(self, trials, **info):
        self.trials = trials
        self._print(trials, force=True)

    # ---- view -------------------------------------------------------------------------------------------
    def counts(self, trials) -> dict[str, int]:
        running = sum(t.status == "RUNNING" for t in trials)
        finished = sum(v == "finished" for v in self.outcome.values())
        stopped = sum(v == "stopped" for v in self.outcome.values())
        failed = sum(v == "failed" for v in self.outcome.values())
        return {"running": running, "finished": finished, "stopped early": stopped, "failed": failed,
                "pending": max(0, self.total - running - finished - stopped - failed)}

    def _print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        counts = ", ".join(f"{v} {k}" for k, v in self.counts(trials).items())
        best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[{time.strftime('%H:%M:%S')}] trials of {self.total}: {counts}{best}", file=self.stream, flush=True)


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None) or getattr(trial.run_metadata, "error_filename", None)
    if path:
        try:
            lines = [line for line in open(path).read().splitlines() if line.strip()]
        except OSError as e:
            return f"(error file {path} unreadable: {e})"
        return lines[-1] if lines else f"(empty error file {path})"
    return "(no error file)"
