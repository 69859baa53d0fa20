"""Kill the sweep driver for real (SIGKILL) mid-sweep, then `frost resume`: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

SWEEP = {
    "name": "killed",
    "trial": {
        "data": {
            "synth": {"train_images": 24, "val_images": 8, "image_size": 64, "classes": 4, "max_objects": 3}
        },
        "input": {"image_size": 64},
        "backbone": {"weights": "none"},
        "train": {"epochs": 4, "batch_size": 8, "device": "cpu"},
        "eval": {"rare_max": 4, "common_max": 12},
    },
    "search": {"optim.lr": {"grid": [0.02, 0.01]}},
    "scheduler": {"type": "fifo"},
    "resources": {"cpus": 1},
    "max_concurrent_trials": 2,
    "max_failures": 0,
}


def frost(*args, root, **kwargs):
    env = {**os.environ, "FROST_HOME": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args, "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def newest_epochs(trials_dir):
    return {
        trial.name: max(int(p.name.split("-")[1]) for p in (trial / "checkpoints").glob("epoch-[0-9]*[0-9]"))
        for trial in trials_dir.iterdir()
        if list((trial / "checkpoints").glob("epoch-[0-9]*[0-9]"))
    }


def test_sigkill_mid_sweep_then_resume_keeps_one_run_per_trial_and_reruns_at_most_one_epoch(tmp_path):
    spec = tmp_path / "killed.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "killed" / "trials"

    # The driver runs in its own session: SIGKILL to that group takes the driver down like a lost machine
    # (Ray's local processes share its fate), and touches nothing this test did not start.
    driver = frost("run", str(spec), root=root, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = newest_epochs(trials_dir) if trials_dir.is_dir() else {}
        if len(done) == 2 and min(done.values()) >= 1:
            break
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no trial reached its first checkpoint in time")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    at_kill = newest_epochs(trials_dir)
    assert all(epoch < 4 for epoch in at_kill.values())  # killed mid-sweep

    tracking = json.loads((root / "sweeps" / "killed" / "tracking.json").read_text())
    client = MlflowClient(tracking["tracking_uri"])

    resumed = frost("resume", "killed", "--json", root=root)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    # Every trial finished; each resumed from its own newest checkpoint (only the in-flight epoch ran twice).
    assert sorted(t["epochs"] for t in summary["trials"]) == [4, 4]
    starts = dict(re.findall(r"resuming \S+/trials/(\S+) from epoch-(\d+)", err))
    for trial_id, epoch in at_kill.items():
        assert int(starts[trial_id]) >= epoch, (trial_id, starts, at_kill)

    # MLflow: one parent, exactly one run per trial, none RUNNING, every epoch once.
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    assert len(runs) == 3 and len(children) == 2
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in summary["trials"]}
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "AP")] == [1, 2, 3, 4]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]


ASHA_SWEEP = {
    **SWEEP,
    "name": "asha-killed",
    "trial": {
        **SWEEP["trial"],
        "optim": {"warmup_steps": 0},
        "train": {**SWEEP["trial"]["train"], "epochs": 3},
    },
    "search": {"optim.lr": {"grid": [0.05, 0.04, 1.0e-9, 2.0e-9]}},
    "scheduler": {"type": "asha", "metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2},
    "max_concurrent_trials": 1,
}


def epochs_by_lr(summary):
    return {t["config"]["optim.lr"]: t["epochs"] for t in summary["trials"]}


def test_asha_decisions_survive_a_kill_between_rungs(tmp_path):
    spec = tmp_path / "asha.yaml"
    spec.write_text(yaml.safe_dump(ASHA_SWEEP))

    straight = frost("run", str(spec), "--json", root=tmp_path / "straight")
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]
    expected = epochs_by_lr(json.loads(out.strip().splitlines()[-1]))
    assert expected[0.05] == 3 and expected[1e-9] == 1  # ASHA did stop trials

    # Kill once the second trial (lr 0.04) passed its first rung and before its second.
    root = tmp_path / "killed"
    driver = frost("run", str(spec), root=root, start_new_session=True)
    trials_dir = root / "sweeps" / "asha-killed" / "trials"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = newest_epochs(trials_dir) if trials_dir.is_dir() else {}
        if len(done) == 2 and sorted(done.values()) == [1, 3]:
            break
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        time.sleep(0.1)
    else:
        pytest.fail("the second trial did not reach its first checkpoint in time")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)

    resumed = frost("resume", "asha-killed", "--json", root=root)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert epochs_by_lr(json.loads(out.strip().splitlines()[-1])) == expected
