"""Typed results and the sweep-from-storage view: the best-trial rule, JSON keys, unreadable trial files."""

import json
import math

import pytest

from service.project import check_sweep_name, find_sweep, project_root
from service.results import SweepSummary, TrialRow, best_value
from service.status import sweep_status
from service.sweep_folder import SPEC_FILE
from trainers.errors import FrostError


def test_best_value_follows_the_mode_and_skips_nan_and_non_numbers():
    values = [0.2, math.nan, "x", None, True, 0.5, 0.1]
    assert best_value(values, "max") == 0.5
    assert best_value(values, "min") == 0.1
    assert best_value([math.nan, None], "max") is None


def test_summary_json_keys_the_metric_by_name_and_picks_the_best_trial():
    rows = [
        TrialRow("a", "TERMINATED", "completed", 4, "r1", 0.3, {"lr": 0.1}),
        TrialRow("b", "TERMINATED", "stopped", 1, "r2", 0.1, {"lr": 0.2}),
        TrialRow("c", "ERROR", "error", 2, "r3", None, {"lr": 0.3}, error="ValueError: boom"),
    ]
    summary = SweepSummary("s", "loss", "min", rows, expected_trials=3)
    data = summary.to_json()
    assert data["best"]["trial_id"] == "b" and data["best"]["loss"] == 0.1
    assert [t["loss"] for t in data["trials"]] == [0.3, 0.1, None]
    assert data["ok"] is False and data["interrupted"] is False
    assert summary.complete
    assert SweepSummary("s", "loss", "min", rows, expected_trials=4).interrupted  # one never started


def _sweep_folder(root, name="demo"):
    spec = (
        "name: demo\n"
        "trial:\n  train: {epochs: 2}\n"
        "search:\n  optim.lr: {grid: [0.01, 0.02]}\n"
        "scheduler: {type: fifo, metric: AP, mode: max}\n"
    )
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    (folder / SPEC_FILE).write_text(spec)
    return folder


def _history(folder, trial_id, records):
    checkpoint = folder / "trials" / trial_id / "checkpoints" / "epoch-0002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "history.json").write_text(records if isinstance(records, str) else json.dumps(records))


def test_status_reads_trials_from_storage_and_flags_an_unreadable_one(tmp_path):
    folder = _sweep_folder(tmp_path)
    (folder / "tracking.json").write_text(
        json.dumps({"trials": {"t1": {"fate": "completed", "run_id": "r1"}, "t2": {"status": "RUNNING"}}})
    )
    _history(folder, "t1", [{"epoch": 1, "AP": 0.2}, {"epoch": 2, "AP": 0.25}])
    _history(folder, "t2", '[{"epoch": 1, "AP": 0.')  # a torn write
    status = sweep_status(folder)
    rows = {t.trial_id: t for t in status.trials}
    assert (rows["t1"].state, rows["t1"].best, rows["t1"].epochs) == ("TERMINATED", 0.25, 2)
    assert rows["t2"].state == "UNREADABLE" and "history.json" in rows["t2"].error
    assert status.state == "INCOMPLETE" and status.best.trial_id == "t1"


def test_status_survives_a_corrupt_tracking_map(tmp_path):
    folder = _sweep_folder(tmp_path)
    (folder / "tracking.json").write_text("\x00\x01 not json")
    assert sweep_status(folder).trials == []


@pytest.mark.parametrize("name", ["../etc", "a/b", "/abs", "..", "", " x", "x\n"])
def test_sweep_names_never_leave_the_sweeps_folder(tmp_path, name):
    with pytest.raises(FrostError, match="sweep name"):
        check_sweep_name(name)
    with pytest.raises(FrostError):
        find_sweep(name, tmp_path)


def test_a_root_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FrostError, match="is a file"):
        project_root(tmp_path / "f")
