"""Trials of two data-parallel workers (Ray Train's TorchTrainer inside Ray Tune, gloo on CPU) on a real Ray
runtime: ASHA stops a weak 2-worker trial between epochs; a worker SIGKILLed mid-trial restarts the worker
group, which resumes from the trial's newest epoch checkpoint; MLflow holds one run per trial, every epoch once.
(The 2-node placement is in test_multinode.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from helpers import frost, newest_epochs, tiny_asha_sweep, tiny_sweep, tracked_once, wait_until

from sweeps.asha_state import read_decisions

pytestmark = pytest.mark.integration

TWO_WORKERS = {"workers_per_trial": 2, "cpus": 1}


def descendants(pid: int) -> dict[int, str]:
    """Live descendants of `pid` (pid -> command line): what this test's own driver started, nothing else."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = commands[child]
            todo.append(child)
    return found


def run(spec: dict, tmp_path: Path) -> tuple[dict, Path]:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    driver = frost("run", str(path), "--json", root=root, start_new_session=True)
    out, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1]), root / "sweeps" / spec["name"]


def test_asha_stops_a_two_worker_trial_and_every_trial_has_one_run(tmp_path):
    spec = tiny_asha_sweep("ddp-asha")
    spec["search"]["optim.lr"]["grid"] = [0.05, 0.04, 1.0e-9]
    spec["resources"] = TWO_WORKERS
    summary, sweep_dir = run(spec, tmp_path)

    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(trials) == 3 and all(t["state"] == "TERMINATED" for t in trials.values()), trials
    decisions = read_decisions(sweep_dir / "asha-state.json")
    # The vanishing learning rate keeps an untrained model's loss: stopped at the first rung.
    (weak,) = [tid for tid, t in trials.items() if t["config"]["optim.lr"] == pytest.approx(1.0e-9)]
    assert decisions[weak].rung == 1, decisions
    for trial_id, trial in trials.items():
        # A stopped trial ends at its decision's epoch in Tune's results (no later epoch reported); the
        # others ran all their epochs.
        expected = decisions[trial_id].rung if trial_id in decisions else 3
        assert trial["epochs"] == expected, (trial, decisions.get(trial_id))
    runs = tracked_once(summary, "ddp-asha")
    for trial_id, mlflow_run in runs.items():
        # Two workers trained it: the trainer says so, and its throughput is both workers' images.
        assert mlflow_run.data.metrics["workers"] == 2, trial_id
        log = (sweep_dir / "trials" / trial_id / "trial.log").read_text()
        assert "2 worker(s), global batch 8" in log, log[-2000:]


def test_a_killed_worker_restarts_the_group_from_the_newest_checkpoint(tmp_path):
    epochs = 6
    spec = tiny_sweep("ddp-kill", lrs=[0.05], epochs=epochs, concurrent=1, failures=2, warmup_steps=0)
    spec["resources"] = TWO_WORKERS
    path = tmp_path / "ddp-kill.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    trials_dir = root / "sweeps" / "ddp-kill" / "trials"
    driver = frost("run", str(path), "--json", root=root, start_new_session=True)
    try:
        # Kill one worker (never the driver, never Ray's own processes) just after epoch 2's checkpoint.
        wait_until(lambda: max(newest_epochs(trials_dir).values(), default=0) >= 2, driver, 600, "epoch 2")
        workers = {p: cmd for p, cmd in descendants(driver.pid).items() if "RayTrainWorker" in cmd}
        assert len(workers) == 2, workers
        at_kill = max(newest_epochs(trials_dir).values())
        os.kill(max(workers), signal.SIGKILL)
        out, err = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
    assert driver.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    (trial,) = summary["trials"]
    assert (trial["state"], trial["epochs"]) == ("TERMINATED", epochs), trial
    log = (trials_dir / trial["trial_id"] / "trial.log").read_text()
    resumed = [int(e) for e in re.findall(r"from epoch-(\d+) \(epoch", log)]
    # The group restarted from the newest checkpoint at the kill, or the one after if the epoch in flight
    # finished its checkpoint before the group noticed: at most one epoch ran twice.
    assert len(resumed) == 1 and at_kill <= resumed[0] <= at_kill + 1, log[-3000:]
    tracked_once(summary, "ddp-kill")  # one run, every epoch once (the replayed epochs were dropped)


def test_a_trial_no_node_can_hold_is_refused_before_tune_starts(tmp_path):
    workers = (os.cpu_count() or 1) + 1  # one worker more than this machine has CPUs: it can never start
    spec = tiny_sweep("ddp-too-big", lrs=[0.05], epochs=1, concurrent=1)
    spec["resources"] = {"workers_per_trial": workers, "cpus": 1}
    path = tmp_path / "too-big.yaml"
    path.write_text(yaml.safe_dump(spec))
    driver = frost("run", str(path), root=tmp_path / "root")
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 2, err[-3000:]
    assert f"one trial needs {workers} workers x {{CPU: 1}} and no trial fits the cluster" in err, err[-3000:]
    assert "Traceback" not in err
    assert not (tmp_path / "root" / "sweeps" / "ddp-too-big" / "trials").exists()  # no trial started
