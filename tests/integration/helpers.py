"""What the integration tests share: a tiny sweep, free loopback ports, `frost` as a process of its own.

Importable as `helpers` from the tests beside it (pytest puts this folder on sys.path: no package here).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

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
