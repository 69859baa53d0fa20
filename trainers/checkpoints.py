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

from trainers.errors import FrostError, TrainingError
from trainers.files import atomic_write_json, atomic_write_text, fsync_dir, read_json_or
from trainers.logs import log

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
    """Write `checkpoints/epoch-NNNN/` durably: files fsynced in a staging folder, renamed into place, the
    parent fsynced. A failed save (a full disk) leaves the previous checkpoints as they were and no staging
    debris, and ends the trial with an error saying so."""
    final = out_dir / "checkpoints" / f"epoch-{epoch:04d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with (tmp / CHECKPOINT_FILE).open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        atomic_write_text(tmp / "metrics.json", json.dumps(state["history"][-1]))
        atomic_write_text(tmp / "history.json", json.dumps(state["history"]))  # readable without torch
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint directory is complete or absent
        fsync_dir(final.parent)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(out_dir).free // 2**20
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise TrainingError(
            f"could not save the checkpoint of epoch {epoch} in {final.parent} ({reason}; {free} MiB free); "
            "the earlier checkpoints are intact: free space and start the trial again to resume"
        ) from None
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain lists: a checkpoint loads with `weights_only=True` (a pickled
    numpy state would not), so loading one never runs code (docs/stack.md)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_of(path: Path) -> int:
    record = read_json_or(path / "metrics.json", {})
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) else -1


def checkpoint_candidates(out_dir: Path, resume_from: Path | None) -> list[Path]:
    """Checkpoints to resume from, newest first: the trial directory's, and `resume_from` (the one Ray Tune
    restored) where it is not among them."""
    found = checkpoint_dirs(out_dir)
    if resume_from and (resume_from / CHECKPOINT_FILE).is_file() and resume_from not in found:
        found.append(resume_from)
    return sorted(found, key=_epoch_of, reverse=True)


def load_checkpoint(
    out_dir: Path, resume_from: Path | None, device: torch.device
) -> tuple[Path, dict] | None:
    """The newest checkpoint that reads, with its state; None when there is none. One that cannot be read
    (cut off by a crash, corrupted, or a planted pickle, which `weights_only=True` refuses without running
    it) is skipped, saying so, for the one before it."""
    for path in checkpoint_candidates(out_dir, resume_from):
        try:
            state = read_checkpoint(path, device)
        except Exception as exc:  # any failure to read it means: not a checkpoint to resume from
            log.warning(
                "checkpoint %s is unreadable (%s): trying the one before it", path, type(exc).__name__
            )
            continue
        return path, state
    return None


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """One checkpoint's state (`weights_only=True`); raises when it cannot be read or is no frost checkpoint."""
    state = torch.load(path / CHECKPOINT_FILE, map_location=device, weights_only=True)
    if not isinstance(state, dict) or not {"epoch", "model", "history"} <= state.keys():
        raise ValueError("not a frost checkpoint")
    return state


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
    """Every attempt recorded; a line cut off by a crash mid-write (the last one) is left out."""
    path = Path(out_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    attempts = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            attempts.append(record)
    return attempts


def record_failure(out_dir: Path, epoch: int, message: str) -> None:
    """A deterministic failure (non-finite loss): retrying from the same checkpoint fails the same way."""
    atomic_write_json(out_dir / FAILED_FILE, {"epoch": epoch, "error": message})


def refuse_failed_trial(out_dir: Path) -> None:
    """A trial that failed deterministically is not trained again: retries (a sweep's) fail at once.

    Only a record record_failure wrote is a training failure (exit 1); anything else at that path (garbage, a
    list, a folder) was not written by frost and is bad input: a FrostError that says how to clear it."""
    path = out_dir / FAILED_FILE
    if not (path.exists() or path.is_symlink()):
        return
    failure = read_json_or(path, None) if path.is_file() else None
    if not isinstance(failure, dict) or not isinstance(failure.get("error"), str):
        raise FrostError(
            f"{path}: not a failure record frost wrote (expected a JSON object with an `error` text); "
            "remove it to train this trial again"
        )
    raise TrainingError(
        f"{failure['error'][:500]} (recorded in {path}; training again from the same checkpoint would repeat "
        "it: change the trial or remove that file)"
    )
