"""Faults inside a running sweep, for real: a trial's worker process killed, a trial whose loss diverges, the
MLflow server down for a while. The sweep goes on; each trial ends as it should, tracked once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from helpers import frost, newest_epochs, sigkill, tiny_sweep, tracked_once, wait_until

from trainers.checkpoints import read_attempts

pytestmark = pytest.mark.integration


@pytest.fixture
def drivers():
    """Start `frost` drivers in their own sessions; whatever still runs at the end is killed (its group only)."""
    started = []

    def start(*args, root):
        driver = frost(*args, root=root, start_new_session=True)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        if driver.poll() is None:
            sigkill(driver)


def trial_of_lr(trials_dir: Path, lr: float) -> Path | None:
    for trial in trials_dir.glob("*") if trials_dir.is_dir() else []:
        spec_file = trial / "trial.yaml"
        if spec_file.exists() and yaml.safe_load(spec_file.read_text())["optim"]["lr"] == lr:
            return trial
    return None


def test_killed_worker_is_retried_from_its_checkpoint_and_a_diverging_trial_fails_alone(tmp_path, drivers):
    # lr 0.02 trains normally and gets its worker killed; lr 1e30 diverges at its first step.
    spec = tiny_sweep("faults", lrs=[0.02, 1.0e30], epochs=4, failures=2, warmup_steps=0)
    spec["trial"]["optim"]["grad_clip"] = None
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "faults" / "trials"

    driver = drivers("run", str(path), "--json", root=root)
    healthy = wait_until(lambda: trial_of_lr(trials_dir, 0.02), driver, 240, "the healthy trial started")
    wait_until(
        lambda: newest_epochs(trials_dir).get(healthy.name, 0) >= 1, driver, 240, "its first checkpoint"
    )
    killed_after = newest_epochs(trials_dir)[healthy.name]
    worker = read_attempts(healthy)[-1]["pid"]
    os.kill(worker, signal.SIGKILL)  # the Ray worker process running the trial, nothing else

    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 1, err[-3000:]  # a trial errored: the summary says so, the sweep still ended
    summary = json.loads(out.strip().splitlines()[-1])
    by_lr = {t["config"]["optim.lr"]: t for t in summary["trials"]}

    # The killed trial was retried, resumed from its newest checkpoint (at most the in-flight epoch re-ran).
    ok = by_lr[0.02]
    assert ok["state"] == "TERMINATED" and ok["epochs"] == 4
    attempts = read_attempts(healthy)
    assert len(attempts) == 2 and attempts[0]["pid"] == worker and attempts[1]["pid"] != worker
    assert attempts[1]["resumed_after_epoch"] >= killed_after

    # The diverging trial ended in error once its retries were spent, without training again.
    bad = by_lr[1.0e30]
    assert bad["state"] == "ERROR"
    diverged = trial_of_lr(trials_dir, 1.0e30)
    assert len(read_attempts(diverged)) == 1  # retries refused at once: nothing trained twice
    assert "non-finite loss at epoch 1" in json.loads((diverged / "failed.json").read_text())["error"]

    # MLflow: one run per trial; the killed one has every epoch once, the diverged one says why it failed.
    runs = tracked_once(summary, "faults")
    assert runs[ok["trial_id"]].info.status == "FINISHED"
    failed = runs[bad["trial_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags["frost.fate"] == "error"
    assert "non-finite loss at epoch 1" in failed.data.tags["frost.fate_detail"]
    assert "recorded in" in failed.data.tags["frost.fate_detail"]  # the last retry was refused, not trained


def test_mlflow_server_down_mid_sweep_loses_nothing(tmp_path, mlflow_server, monkeypatch, drivers):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the tracker's back-off decides, not MLflow's
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tracking = {"uri": mlflow_server.uri, "experiment": "frost-outage-sweep"}
    spec = tiny_sweep("outage", lrs=[0.02, 0.01], epochs=5, tracking=tracking)
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "outage" / "trials"

    driver = drivers("run", str(path), "--json", root=root)
    wait_until(lambda: len(newest_epochs(trials_dir)) == 2, driver, 240, "both trials checkpointed an epoch")
    mlflow_server.stop()
    before = newest_epochs(trials_dir)
    # Down until every trial has trained at least one more epoch: those results arrive while it is down.
    wait_until(
        lambda: all(newest_epochs(trials_dir)[t] > e for t, e in before.items()),
        driver,
        240,
        "epochs in outage",
    )
    mlflow_server.start()

    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]  # no trial failed
    summary = json.loads(out.strip().splitlines()[-1])
    assert [t["state"] for t in summary["trials"]] == ["TERMINATED", "TERMINATED"]
    assert summary["tracking_uri"] == mlflow_server.uri
    assert [t["epochs"] for t in summary["trials"]] == [5, 5]
    runs = tracked_once(summary, "frost-outage-sweep")  # every epoch there, the outage's ones included
    assert all(run.info.status == "FINISHED" for run in runs.values())
