"""The tracker's operations and their one set of rules, without MLflow (tests/integration/test_tracking.py
runs them against real MLflow stores)."""

import json

import pytest
from pydantic import ValidationError

from service.tracking.ops import EndTrial, Interrupt, LogEpoch, StartSweep, StartTrial, fold
from service.tracking.outbox import Outbox


def test_a_malformed_operation_fails_where_it_is_made():
    with pytest.raises(ValidationError):
        EndTrial(trial_id="t1", fate="exploded")
    with pytest.raises(ValidationError):
        LogEpoch(trial_id="t1", step="one", metrics={})


def test_fold_rules():
    ledger = {"parent_status": None, "trials": {}}
    for op in [
        StartSweep(name="s", experiment="e", spec_yaml="", spec_hash="h"),
        StartTrial(trial_id="a", run_name="a"),
        StartTrial(trial_id="b", run_name="b"),
        LogEpoch(trial_id="a", step=2, metrics={"AP": 0.1}),
        LogEpoch(trial_id="a", step=1, metrics={"AP": 0.1}),  # a replay: last_step stays 2
        EndTrial(trial_id="b", fate="stopped"),
        Interrupt(),
    ]:
        fold(ledger, op)
    assert ledger["trials"]["a"] == {"last_step": 2, "status": "KILLED", "fate": "interrupted"}
    assert ledger["trials"]["b"] == {"last_step": None, "status": "FINISHED", "fate": "stopped"}
    assert ledger["parent_status"] == "KILLED"


def test_outbox_replays_in_order_and_skips_a_line_cut_by_a_crash(tmp_path):
    outbox = Outbox(tmp_path / "outbox.jsonl")
    outbox.append(1, StartTrial(trial_id="a", run_name="a"))
    outbox.append(2, LogEpoch(trial_id="a", step=1, metrics={"AP": 0.5}))
    outbox.append(3, EndTrial(trial_id="a", fate="completed"))
    with outbox.path.open("a") as fh:
        fh.write(json.dumps({"seq": 4, "op": {"op": "log", "trial_id": "a"}}) + "\n")  # malformed
        fh.write('{"seq": 5, "op": {"op": "end_')  # cut mid-write
    pending = outbox.pending(done_seq=1)
    assert [(seq, op.op) for seq, op in pending] == [(2, "log"), (3, "end_trial")]
    assert pending[0][1].metrics == {"AP": 0.5}
