"""What is known of a sweep from its storage alone (no Ray, no MLflow): `frost status` and the driver's summary.

The folder's files are read through service/sweep_folder.py; the trainer keeps each trial's per-epoch history
in its newest checkpoint (`history.json`, readable without torch).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from service.results import FATE_STATE, SweepSummary, TrialRow, best_value, is_number
from service.sweep_folder import SweepFolder, Unreadable, searched_values, trial_history
from sweeps.spec import SweepSpec


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
    folder = SweepFolder(directory)
    spec = spec or folder.spec()
    tracking = folder.tracking
    trials = [
        _row(tid, tracking.trials.get(tid, {}), folder.trial_dir(tid), spec) for tid in folder.trial_ids()
    ]
    decisions = folder.decisions
    summary = SweepSummary(
        name=directory.name,
        metric=spec.scheduler.metric,
        mode=spec.scheduler.mode,
        trials=trials,
        expected_trials=spec.trial_count(),
        tracking_uri=tracking.tracking_uri,
        experiment=spec.experiment_name,
        parent_run_id=tracking.parent_run_id,
    )
    for row in trials:
        decision = decisions.get(row.trial_id)
        row.extra["asha"] = None
        if decision is not None:
            row.extra["asha"] = {**dataclasses.asdict(decision), "describe": decision.describe()}
            row.extra["stop_reason"] = decision.describe()
    summary.state = "COMPLETE" if summary.complete else ("RUNNING" if tracking.running else "INCOMPLETE")
    return summary
