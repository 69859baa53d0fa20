"""What the integration tests share: a tiny sweep, free loopback ports, `frost` as a process of its own.

Importable as `helpers` from the tests beside it (pytest puts this folder on sys.path: no package here).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

# A trial of about a second an epoch on 2 CPU cores: 64 px synthetic images, 24 train / 8 val, 4 classes,
# random initialisation (no pretraining needed).
TINY_TRIAL: dict[str, Any] = {
    "data": {
        "synth": {"train_images": 24, "val_images": 8, "image_size": 64, "classes": 4, "max_objects": 3}
    },
    "input": {"image_size": 64},
    "backbone": {"weights": "none"},
    "train": {"epochs": 4, "batch_size": 8, "device": "cpu"},
    "eval": {"rare_max": 4, "common_max": 12},
}


def tiny_sweep(
    name: str,
    lrs: list[float],
    epochs: int,
    *,
    concurrent: int = 2,
    failures: int = 0,
    warmup_steps: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A sweep over `optim.lr` of tiny trials, FIFO unless `scheduler=` says otherwise, one CPU a trial."""
    trial = copy.deepcopy(TINY_TRIAL)
    trial["train"]["epochs"] = epochs
    if warmup_steps is not None:
        trial["optim"] = {"warmup_steps": warmup_steps}
    return {
        "name": name,
        "trial": trial,
        "search": {"optim.lr": {"grid": list(lrs)}},
        "scheduler": {"type": "fifo"},
        "resources": {"cpus": 1},
        "max_concurrent_trials": concurrent,
        "max_failures": failures,
        **spec,
    }


def tiny_asha_sweep(name: str) -> dict[str, Any]:
    """Four tiny trials, one at a time so ASHA's decisions are reproducible: the two with a vanishing learning
    rate keep the loss of an untrained model, so ASHA (on loss, grace 1, 3 epochs) must stop them at rung 1."""
    return tiny_sweep(
        name,
        lrs=[0.05, 0.04, 1.0e-9, 2.0e-9],
        epochs=3,
        concurrent=1,
        warmup_steps=0,
        scheduler={"type": "asha", "metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2},
    )


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """`frost ARGS` in this process: (exit code, stdout, stderr)."""
    import io

    from service.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frost(*args: str, root: Path, **kwargs: Any) -> subprocess.Popen:
    """`frost ARGS --root ROOT` as a process of its own (a driver the test can SIGKILL), output piped."""
    env = {**kwargs.pop("env", os.environ), "FROST_HOME": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args, "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def newest_epochs(trials_dir: Path) -> dict[str, int]:
    """Trial id -> its newest epoch checkpoint, for the trials that have one."""
    if not trials_dir.is_dir():
        return {}
    return {
        trial.name: max(int(p.name.split("-")[1]) for p in (trial / "checkpoints").glob("epoch-[0-9]*[0-9]"))
        for trial in trials_dir.iterdir()
        if list((trial / "checkpoints").glob("epoch-[0-9]*[0-9]"))
    }


def started_trials(trials_dir: Path) -> set[str]:
    """Trials that began training (their attempt is recorded), by directory name."""
    from trainers.checkpoints import read_attempts

    return {t.name for t in trials_dir.iterdir() if read_attempts(t)} if trials_dir.is_dir() else set()


def wait_until(condition: Callable[[], Any], driver: subprocess.Popen, timeout: float, what: str) -> Any:
    """Poll `condition` until it is truthy (returned) while `driver` runs; fail if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def sigkill(driver: subprocess.Popen) -> None:
    """SIGKILL a driver started with start_new_session=True, with its whole process group: a lost machine."""
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)


def tracked_once(summary: dict[str, Any], experiment: str) -> dict[str, Any]:
    """Assert MLflow holds the sweep's parent and exactly one run per trial of `summary`, none RUNNING, and
    every epoch a trial ran exactly once (AP and loss steps 1..epochs, no gap, no duplicate).

    Returns the trials' runs by trial id, for the caller's own checks."""
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [
        summary["parent_run_id"]
    ]
    children = {
        r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]
    }
    assert len(runs) == 1 + len(summary["trials"])
    assert set(children) == {t["mlflow_run_id"] for t in summary["trials"]}
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    for trial in summary["trials"]:
        for key in ("AP", "loss"):
            steps = [m.step for m in client.get_metric_history(trial["mlflow_run_id"], key)]
            assert steps == list(range(1, trial["epochs"] + 1)), (trial["trial_id"], key, steps)
    return {t["trial_id"]: children[t["mlflow_run_id"]] for t in summary["trials"]}
