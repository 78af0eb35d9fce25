"""The ledger's rules on a real sqlite MLflow store, and the search lease between real processes."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dcell_core.search import ledger
from dcell_core.search.lease import LEASE_FILE, Lease, SearchOwned


def trial(client, exp, parent, tid: str, budget: int, values: list[float]):
    run_id = ledger.start_trial(client, exp, parent, tid, tid, {"train.lr": tid}, {})
    ledger.set_budget(client, run_id, budget)
    for epoch, v in enumerate(values, start=1):
        client.log_metric(run_id, "epoch", epoch, step=epoch)
        client.log_metric(run_id, "val/pearson", v, step=epoch)
    return run_id


def test_the_budget_of_each_trial_decides_finished_or_stopped(ledger_store):
    client, exp, parent = ledger_store
    # budget 3 stopped by Tune at epoch 2 (base train.epochs 2 would have called it finished): stopped early
    a = trial(client, exp, parent, "a", 3, [0.5, 0.95])
    b = trial(client, exp, parent, "b", 1, [0.6])  # budget 1, Tune ends it at epoch 1: finished
    c = trial(client, exp, parent, "c", 2, [0.3, 0.7])  # ends itself after its budget
    ledger.trial_ended_by_tune(client, client.get_run(a), 2)
    ledger.trial_ended_by_tune(client, client.get_run(b), 1)
    ledger.trial_finished(client, c)
    ledger.trial_ended_by_tune(client, client.get_run(c), 2)  # already ended: nothing changes
    got = {r.trial_id: r for r in ledger.trial_records(client, exp, parent, "val/pearson")}
    assert (got["a"].status, got["a"].outcome, got["a"].epochs, got["a"].eligible) == ("KILLED", "stopped early", 2,
                                                                                         False)
    assert client.get_run(a).data.tags[ledger.TAG_STOPPED_AT] == "2"
    assert (got["b"].status, got["c"].status) == ("FINISHED", "FINISHED")
    # the stopped trial has the best score, but only trials that ran their budget compete
    assert [r.trial_id for r in ledger.ranked(list(got.values()), "max")] == ["c", "b", "a"]
    assert ledger.winner(list(got.values()), "max").trial_id == "c"
    assert ledger.winner(list(got.values()), "min").trial_id == "b"
    assert ledger.counts(list(got.values())) == {"running": 0, "finished": 2, "stopped early": 1, "failed": 0,
                                                 "interrupted": 0}


def test_interrupted_trials_resume_and_parent_statuses(ledger_store):
    client, exp, parent = ledger_store
    a = trial(client, exp, parent, "a", 2, [0.5])
    assert ledger.interrupt_trials(client, exp, parent) == 1
    assert ledger.outcome_of(client.get_run(a)) == "interrupted"
    assert ledger.start_trial(client, exp, parent, "a", "a", {}, {}) == a  # the same run, RUNNING again
    run = client.get_run(a)
    assert run.info.status == "RUNNING" and ledger.TAG_INTERRUPTED not in run.data.tags
    assert ledger.close_parent(client, parent, "interrupted") == "KILLED"
    ledger.reopen_parent(client, parent, "host x pid 1")
    assert client.get_run(parent).info.status == "RUNNING"
    assert ledger.TAG_OUTCOME not in client.get_run(parent).data.tags
    assert ledger.close_parent(client, parent, "completed", "no trial has a score: 1 failed") == "FAILED"
    assert client.get_run(parent).data.tags[ledger.TAG_ERROR] == "no trial has a score: 1 failed"
    assert ledger.close_parent(client, parent, "completed") == "FINISHED"
    with pytest.raises(ValueError, match="outcome must be one of"):
        ledger.close_parent(client, parent, "done")


def test_nonfinite_last_epoch_never_wins(ledger_store):
    client, exp, parent = ledger_store
    a = trial(client, exp, parent, "a", 1, [float("nan")])
    ledger.trial_finished(client, a)
    records = ledger.trial_records(client, exp, parent, "val/pearson")
    assert ledger.winner(records, "max") is None and not records[0].eligible


def test_lease_refuses_a_live_owner_and_takes_over_a_dead_or_expired_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from dcell_core.search.lease import Lease;"
        f"Lease(Path({str(tmp_path)!r})).acquire(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SearchOwned, match=f"another driver: host .* pid {holder.pid} "):
            Lease(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    taken = Lease(tmp_path, ttl_s=3)  # the owner's process is gone: its lease is free at once
    owner = taken.acquire()
    first_expiry = owner["expires"]
    time.sleep(2.5)  # renewed every ttl/3
    on_disk = json.loads((tmp_path / LEASE_FILE).read_text())
    assert on_disk["pid"] == owner["pid"] and on_disk["expires"] > first_expiry
    taken.release()
    assert not (tmp_path / LEASE_FILE).exists()
    # a lease of a live process on another host counts until it expires
    (tmp_path / LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0,
                                                   "expires": time.time() + 60}))
    with pytest.raises(SearchOwned, match="host elsewhere pid 1"):
        Lease(tmp_path).acquire()
    (tmp_path / LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0,
                                                   "expires": time.time() - 1}))
    expired = Lease(tmp_path)
    assert expired.acquire()["host"] != "elsewhere"
    expired.release()
