"""What is known of sweeps from their storage alone (no Ray needed): `frost status` and `frost ls`.

A sweep's directory holds its spec (`frost-sweep.yaml`), the trial → MLflow run map with each trial's fate
(`tracking.json`, written by the driver) and one directory per trial with its epoch checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from trainers.errors import FrostError

SPEC_FILE = "frost-sweep.yaml"
# A trial's fate (as the tracker records it) → the state the summaries report.
_STATE = {"completed": "TERMINATED", "stopped": "TERMINATED", "error": "ERROR", "interrupted": "INTERRUPTED"}


def sweeps_dir(root: Path) -> Path:
    return root / "sweeps"


def list_sweeps(root: Path) -> list[str]:
    base = sweeps_dir(root)
    return sorted(p.parent.name for p in base.glob(f"*/{SPEC_FILE}")) if base.is_dir() else []


def find_sweep(name: str, root: Path) -> Path:
    directory = sweeps_dir(root) / name
    if not (directory / SPEC_FILE).is_file():
        known = ", ".join(list_sweeps(root)) or "none"
        raise FrostError(f"no sweep named '{name}' under {sweeps_dir(root)} (known: {known})")
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def trial_history(trial_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a trial from its newest checkpoint (the trainer keeps the history there)."""
    checkpoints = sorted((trial_dir / "checkpoints").glob("epoch-[0-9]*[0-9]/history.json"))
    if not checkpoints:
        return []
    history = json.loads(checkpoints[-1].read_text())
    return history if isinstance(history, list) else []


def searched_values(trial_dir: Path, searched: list[str]) -> dict[str, Any]:
    """The searched fields' values of a trial, read from the spec its trainer saved."""
    try:
        spec = yaml.safe_load((trial_dir / "trial.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    values = {}
    for path in searched:
        node: Any = spec
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        values[path] = node
    return values


def sweep_status(
    directory: Path, metric: str, mode: str, expected_trials: int | None, searched: list[str] | None = None
) -> dict[str, Any]:
    """Summary of a sweep from its directory: the keys of `frost run --json`, plus the sweep's `state`."""
    tracking = _read_json(directory / "tracking.json")
    runs = tracking.get("trials", {})
    trial_ids = sorted(set(runs) | {p.name for p in (directory / "trials").glob("*") if p.is_dir()})
    trials = []
    for trial_id in trial_ids:
        info = runs.get(trial_id, {})
        history = trial_history(directory / "trials" / trial_id)
        values = [
            h[metric] for h in history if isinstance(h.get(metric), (int, float)) and h[metric] == h[metric]
        ]
        best = (max(values) if mode == "max" else min(values)) if values else None
        trials.append(
            {
                "trial_id": trial_id,
                "state": _STATE.get(
                    info.get("fate"), "RUNNING" if info.get("status") == "RUNNING" else "PENDING"
                ),
                "fate": info.get("fate"),
                "epochs": max((int(h.get("epoch", 0)) for h in history), default=0),
                "mlflow_run_id": info.get("run_id"),
                metric: best,
                "config": searched_values(directory / "trials" / trial_id, searched or []),
            }
        )
    finished = all(t["state"] in ("TERMINATED", "ERROR") for t in trials)
    complete = bool(trials) and finished and (expected_trials is None or len(trials) >= expected_trials)
    return {
        "name": directory.name,
        "state": "COMPLETE"
        if complete
        else ("RUNNING" if tracking.get("parent_status") == "RUNNING" else "INCOMPLETE"),
        "tracking_uri": tracking.get("tracking_uri"),
        "parent_run_id": tracking.get("parent_run_id"),
        "metric": metric,
        "trials": trials,
    }
