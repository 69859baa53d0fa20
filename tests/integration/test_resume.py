"""Kill the sweep driver for real (SIGKILL) mid-sweep, then `frost resume`: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    frost,
    newest_epochs,
    sigkill,
    started_trials,
    tiny_asha_sweep,
    tiny_sweep,
    tracked_once,
    wait_until,
)

from trainers.checkpoints import read_attempts

pytestmark = pytest.mark.integration

SWEEP = tiny_sweep("killed", lrs=[0.02, 0.01], epochs=4)


def wait_for_workers_gone(trials_dir, timeout=60):
    pids = [read_attempts(trials_dir / t)[-1]["pid"] for t in started_trials(trials_dir)]
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"trial workers {pids} outlived their driver by {timeout} s"
        time.sleep(0.1)


def before_first_report(trials_dir):
    # A trial is training and no epoch has been checkpointed (so none reported) yet.
    return bool(started_trials(trials_dir)) and not newest_epochs(trials_dir)


def mid_epoch(trials_dir):
    # Both trials checkpointed (and reported) an epoch: each is inside a later one.
    done = newest_epochs(trials_dir)
    return len(done) == 2 and min(done.values()) >= 1


@pytest.mark.parametrize("kill_when", [before_first_report, mid_epoch], ids=lambda f: f.__name__)
def test_sigkill_then_resume_keeps_one_run_per_trial_and_reruns_at_most_one_epoch(tmp_path, kill_when):
    spec = tmp_path / "killed.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "killed" / "trials"

    # The driver runs in its own session: SIGKILL to that group takes the driver down like a lost machine
    # (Ray's local processes share its fate), and touches nothing this test did not start.
    driver = frost("run", str(spec), root=root, start_new_session=True)
    wait_until(lambda: kill_when(trials_dir), driver, 240, f"kill point {kill_when.__name__}")
    sigkill(driver)
    wait_for_workers_gone(trials_dir)  # a trial's worker may checkpoint the epoch it was in before it notices
    at_kill = newest_epochs(trials_dir)
    assert all(epoch < 4 for epoch in at_kill.values())  # killed mid-sweep
    started = started_trials(trials_dir)

    resumed = frost("resume", "killed", "--json", root=root)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    # Every trial finished; each resumed from its own newest checkpoint (only the in-flight epoch ran twice).
    assert sorted(t["epochs"] for t in summary["trials"]) == [4, 4]
    # Each started trial resumed right after its newest checkpoint at the kill: only the epoch in flight re-ran.
    for trial_id in started:
        first, again = read_attempts(trials_dir / trial_id)
        assert again["resumed_after_epoch"] == at_kill.get(trial_id, 0), (trial_id, first, again, at_kill)

    # MLflow: one parent, exactly one run per trial, none RUNNING, every epoch once.
    runs = tracked_once(summary, "killed")
    assert all(run.info.status == "FINISHED" for run in runs.values())


ASHA_SWEEP = tiny_asha_sweep("asha-killed")


def epochs_by_lr(summary):
    return {t["config"]["optim.lr"]: t["epochs"] for t in summary["trials"]}


@pytest.fixture(scope="module")
def asha_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("asha") / "asha.yaml"
    path.write_text(yaml.safe_dump(ASHA_SWEEP))
    return path


@pytest.fixture(scope="module")
def uninterrupted(asha_spec, tmp_path_factory):
    """Epochs per lr of the same seeded sweep, run without interruption."""
    straight = frost("run", str(asha_spec), "--json", root=tmp_path_factory.mktemp("straight"))
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]
    expected = epochs_by_lr(json.loads(out.strip().splitlines()[-1]))
    assert expected[0.05] == 3 and expected[1e-9] == 1  # ASHA did stop trials
    return expected


def lr_of(trial_dir):
    return yaml.safe_load((trial_dir / "trial.yaml").read_text())["optim"]["lr"]


def second_trial_between_rungs(trials_dir, expected):
    # The first trial is done, the second passed its first rung and not yet its second.
    return sorted(newest_epochs(trials_dir).values()) == [1, 3]


def two_trials_decided(trials_dir, expected):
    # Two trials ended (finished or stopped at a rung), the next has not reached its first rung: its decision
    # depends only on rung records of trials that are over, which a restored stock ASHA has forgotten.
    # Measured with Ray Tune's stock ASHAScheduler in place of PersistentASHA: this kill point fails (the two
    # lr ~ 0 trials ran 3 epochs instead of being stopped at 1); second_trial_between_rungs passed.
    done = newest_epochs(trials_dir)
    return len(done) == 2 and all(epoch == expected[lr_of(trials_dir / t)] for t, epoch in done.items())


@pytest.mark.parametrize(
    "kill_when", [second_trial_between_rungs, two_trials_decided], ids=lambda f: f.__name__
)
def test_asha_decisions_survive_a_kill(asha_spec, uninterrupted, tmp_path, kill_when):
    root = tmp_path / "killed"
    driver = frost("run", str(asha_spec), root=root, start_new_session=True)
    trials_dir = root / "sweeps" / "asha-killed" / "trials"
    wait_until(lambda: kill_when(trials_dir, uninterrupted), driver, 300, f"kill point {kill_when.__name__}")
    sigkill(driver)

    resumed = frost("resume", "asha-killed", "--json", root=root)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert epochs_by_lr(summary) == uninterrupted

    # MLflow: one run per trial, none RUNNING; a trial ASHA stopped has exactly the epochs it ran.
    runs = tracked_once(summary, "asha-killed")
    assert all(run.info.status == "FINISHED" for run in runs.values())


def test_a_sweep_has_one_driver_at_a_time_and_a_killed_one_lets_go(tmp_path):
    from service.project import sweep_lock

    spec = tmp_path / "locked.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep("locked", lrs=[0.02], epochs=20)))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "locked" / "trials"
    driver = frost("run", str(spec), root=root, start_new_session=True)
    try:
        wait_until(lambda: started_trials(trials_dir), driver, 240, "the trial started")
        second = frost("resume", "locked", root=root)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-3000:]
        assert f"sweep 'locked' is being run by pid {driver.pid} on " in err and "Traceback" not in err
        assert driver.poll() is None  # the first driver goes on
    finally:
        sigkill(driver)
    with sweep_lock(root / "sweeps" / "locked"):  # SIGKILL released it: the next driver may take over
        pass
