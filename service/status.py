"""What is known of a sweep from its storage alone (no Ray, no MLflow): `frost status`, `frost ls`, the plots.

A sweep's directory holds its spec (`frost-sweep.yaml`), the trial -> MLflow run map with each trial's fate
(`tracking.json`, written by the driver) and one directory per trial with its epoch checkpoints; the trainer
keeps each trial's per-epoch history in its newest checkpoint (`history.json`, readable without torch).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from service.project import SPEC_FILE
from service.results import FATE_STATE, SweepSummary, TrialRow, best_value, is_number
from sweeps.asha_state import STATE_FILE, read_decisions
from sweeps.spec import SweepSpec, load_sweep_spec
from trainers.files import read_json_or

TRACKING_FILE = "tracking.json"


class Unreadable(Exception):
    """A trial file that exists but cannot be parsed (torn write, planted garbage)."""


def trial_dirs(directory: Path) -> list[Path]:
    trials = directory / "trials"
    return sorted(p for p in trials.glob("*") if p.is_dir()) if trials.is_dir() else []


def trial_history(trial_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a trial from its newest complete checkpoint; [] before its first epoch.
    Raises Unreadable when that checkpoint's history is not a JSON list of records."""
    checkpoints = sorted((trial_dir / "checkpoints").glob("epoch-[0-9]*[0-9]/history.json"))
    if not checkpoints:
        return []
    history = read_json_or(checkpoints[-1], None)
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise Unreadable(f"{checkpoints[-1]}: not a JSON list of epoch records")
    return history


def searched_values(trial_dir: Path, searched: list[str]) -> dict[str, Any]:
    """The searched fields' values of a trial, read from the spec its trainer saved."""
    try:
        spec = yaml.safe_load((trial_dir / "trial.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    values = {}
    for path in searched:
        node: Any = spec
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        values[path] = node
    return values


def _row(trial_id: str, run: dict[str, Any], trial_dir: Path, spec: SweepSpec) -> TrialRow:
    metric, mode = spec.scheduler.metric, spec.scheduler.mode
    state = FATE_STATE.get(run.get("fate") or "", "RUNNING" if run.get("status") == "RUNNING" else "PENDING")
    row = TrialRow(
        trial_id=trial_id,
        state=state,
        fate=run.get("fate"),
        mlflow_run_id=run.get("run_id"),
        config=searched_values(trial_dir, spec.searched_paths),
    )
    try:
        history = trial_history(trial_dir)
    except Unreadable as exc:
        row.state, row.error = "UNREADABLE", str(exc)
        return row
    row.best = best_value((h.get(metric) for h in history), mode)
    row.epochs = max((int(h["epoch"]) for h in history if is_number(h.get("epoch"))), default=0)
    return row


def sweep_status(directory: Path, spec: SweepSpec | None = None) -> SweepSummary:
    """The sweep as its storage tells it: every trial it knows, its state and best metric."""
    spec = spec or load_sweep_spec(directory / SPEC_FILE)
    tracking = read_json_or(directory / TRACKING_FILE, {})
    tracking = tracking if isinstance(tracking, dict) else {}
    runs = tracking.get("trials") if isinstance(tracking.get("trials"), dict) else {}
    assert isinstance(runs, dict)
    trial_ids = sorted(set(runs) | {p.name for p in trial_dirs(directory)})
    decisions = read_decisions(directory / STATE_FILE)
    trials = [
        _row(tid, runs[tid] if isinstance(runs.get(tid), dict) else {}, directory / "trials" / tid, spec)
        for tid in trial_ids
    ]
    summary = SweepSummary(
        name=directory.name,
        metric=spec.scheduler.metric,
        mode=spec.scheduler.mode,
        trials=trials,
        expected_trials=spec.trial_count(),
        tracking_uri=tracking.get("tracking_uri"),
        experiment=spec.experiment_name,
        parent_run_id=tracking.get("parent_run_id"),
    )
    for row in trials:
        decision = decisions.get(row.trial_id)
        row.extra["asha"] = None
        if decision is not None:
            row.extra["asha"] = {**dataclasses.asdict(decision), "describe": decision.describe()}
            row.extra["stop_reason"] = decision.describe()
    summary.state = (
        "COMPLETE"
        if summary.complete
        else ("RUNNING" if tracking.get("parent_status") == "RUNNING" else "INCOMPLETE")
    )
    return summary
