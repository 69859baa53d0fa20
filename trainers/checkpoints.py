"""A trial directory's durable state: epoch checkpoints (with RNG states), attempts and recorded failures.

`checkpoints/epoch-NNNN/` holds state.pt (model, optimizer, scheduler, scaler, RNG states, history) plus
metrics.json and history.json readable without torch; `attempts.jsonl` has one line per start of the trial;
`failed.json` records a deterministic failure so that retries stop.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.errors import TrainingError

CHECKPOINT_FILE = "state.pt"
ATTEMPTS_FILE = "attempts.jsonl"
FAILED_FILE = "failed.json"


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    # Not `epoch-NNNN.tmp`: a save interrupted after state.pt was written is no checkpoint (the rename is).
    return sorted(p for p in root.glob("epoch-[0-9]*[0-9]") if (p / CHECKPOINT_FILE).is_file())


def save_checkpoint(out_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    final = out_dir / "checkpoints" / f"epoch-{epoch:04d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / CHECKPOINT_FILE)
    (tmp / "metrics.json").write_text(json.dumps(state["history"][-1]))
    (tmp / "history.json").write_text(json.dumps(state["history"]))  # readable without torch
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic: a checkpoint directory is complete or absent
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def newest_checkpoint(out_dir: Path, resume_from: Path | None) -> Path | None:
    """The newest epoch checkpoint in the trial directory, or `resume_from` when that is newer."""
    found = checkpoint_dirs(out_dir)
    candidates = found[-1:] + (
        [resume_from] if resume_from and (resume_from / CHECKPOINT_FILE).is_file() else []
    )
    if not candidates:
        return None

    def epoch_of(path: Path) -> int:
        return json.loads((path / "metrics.json").read_text()).get("epoch", 0)

    return max(candidates, key=epoch_of)


def record_attempt(out_dir: Path, resumed_after: int) -> None:
    """One line per start of this trial: when, where (host, pid) and after which epoch it resumed.

    What a retried or resumed trial re-ran is read off here; the pid is the process training right now.
    """
    line = {
        "attempt": len(read_attempts(out_dir)) + 1,
        "started": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "resumed_after_epoch": resumed_after,
    }
    with (out_dir / ATTEMPTS_FILE).open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def read_attempts(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_failure(out_dir: Path, epoch: int, message: str) -> None:
    """A deterministic failure (non-finite loss): retrying from the same checkpoint fails the same way."""
    (out_dir / FAILED_FILE).write_text(json.dumps({"epoch": epoch, "error": message}))


def refuse_failed_trial(out_dir: Path) -> None:
    """A trial that failed deterministically is not trained again: retries (a sweep's) fail at once."""
    path = out_dir / FAILED_FILE
    if path.exists():
        failure = json.loads(path.read_text())
        raise TrainingError(
            f"{failure['error']} (recorded in {path}; training again from the same checkpoint would repeat it: "
            "change the trial or remove that file)"
        )
