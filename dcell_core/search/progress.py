"""Driver-side Tune callback: live progress lines, and the statuses only the driver can know.

A trial records its own FINISHED or FAILED. What it cannot record is that the scheduler stopped it (its worker is
stopped mid-run) or that its worker died: Tune tells the driver, and this callback writes it through the ledger.
The progress line counts trials from the record itself (the ledger), so trials that ended before an interruption
are still counted after a resume, and its leader is the winner by the ledger's one rule.

Tune pickles its run config, this callback included, when a search starts, and brings that object back when the
search resumes. So what may change between invocations (the retries a crashed trial gets, the tracking store's
address) is read from the search's state file at setup, not kept in the object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray import tune

from dcell_core.search import ledger, tracking


class SearchProgress(tune.Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str,
                 total: int, state_path: Path, stream=sys.stdout, min_interval_s: float = 5.0):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self.metric, self.mode, self.total, self.state_path = metric, mode, total, Path(state_path)
        self.stream, self.min_interval_s = stream, min_interval_s
        self.max_failures: int | None = None
        self._last_print = 0.0
        self._last_line = ""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("client", "stream")}

    def __setstate__(self, state):
        self.__dict__.update(state, stream=sys.stdout,
                             client=tracking.MlflowClient(tracking_uri=state["tracking_uri"]))

    # ---- Tune hooks -------------------------------------------------------------------------------------
    def setup(self, **info):
        state = json.loads(self.state_path.read_text())
        self.max_failures = int(state["max_failures"])
        if state["tracking_uri"] != self.tracking_uri:  # a resume that reached the store at a new address
            self.tracking_uri = state["tracking_uri"]
            self.client = tracking.MlflowClient(tracking_uri=self.tracking_uri)

    def on_step_begin(self, iteration, trials, **info):
        # Tune gives each trial the run config's max_failures when it is made, and keeps it in the trials it
        # restores: this invocation's value (--max-failures, also on --resume) replaces it on every trial.
        for t in trials:
            if t.max_failures != self.max_failures:
                t.max_failures = self.max_failures

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is not None:
            ledger.trial_ended_by_tune(self.client, run, int((trial.last_result or {}).get("epoch", 0)))
        self._print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is not None:
            ledger.trial_errored(self.client, run, _error_text(trial))
        self._print(trials, force=True)
        print(f"  trial {trial.trial_id} failed: {_error_text(trial)}", file=self.stream, flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A crashed trial (its node lost, its worker killed) that Tune starts again from its last checkpoint."""
        error = _error_text(trial)
        run = self._run(trial)
        if run is not None:
            ledger.trial_retried(self.client, run, trial.num_failures, error)
        print(f"  trial {trial.trial_id} crashed ({error}); retry {trial.num_failures} from its last checkpoint",
              file=self.stream, flush=True)

    def on_experiment_end(self, trials, **info):
        self._print(trials, force=True)

    # ---- view -------------------------------------------------------------------------------------------
    def _run(self, trial):
        return ledger.find_trial(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)

    def _print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        line = progress_line(self.client, self.experiment_id, self.parent_run_id, self.metric, self.mode, self.total)
        if line == self._last_line:
            return
        self._last_line = line
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)


def progress_line(client, experiment_id: str, parent_run_id: str, metric: str, mode: str, total: int) -> str:
    """'trials of 8: 1 running, 3 finished, ... | leader val/pearson 0.9 (trial id)' from the record; with
    replicates the leader's score is its mean, followed by its interval: '0.9 [0.88, 0.92]'."""
    records = ledger.trial_records(client, experiment_id, parent_run_id, metric)
    counts = ledger.counts(records)
    counts["pending"] = total - sum(counts.values())
    text = f"trials of {total}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    leader = ledger.winner(records, mode)
    if leader is not None:
        interval = f" [{leader.ci_low:.4f}, {leader.ci_high:.4f}]" if leader.replicates > 1 else ""
        text += f" | leader {metric} {leader.score:.4f}{interval} ({leader.trial_id})"
    return text


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None) or getattr(trial.run_metadata, "error_filename", None)
    if path:
        try:
            lines = [line for line in open(path).read().splitlines() if line.strip()]
        except OSError as e:
            return f"(error file {path} unreadable: {e})"
        return lines[-1] if lines else f"(empty error file {path})"
    return "(no error file)"
