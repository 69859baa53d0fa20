"""One trial as the report reads it (`ReportRow`), from the sweep's MLflow runs and, for trials MLflow does
not know (an outage, a run never created), from the sweep's own folder.

MLflow comes first so that a multi-node sweep is complete: a trial whose folder is on another machine is
still one child run of the sweep's parent run. Each metric's value is the run's latest (the last evaluated
epoch for AP and friends, which are logged only when evaluated). docs/report.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.results import is_number
from service.sweep_folder import SweepFolder, Unreadable, trial_history
from trainers.logs import log
from trainers.safe_yaml import load_machine_yaml

# COCO's -1: no class of that bucket in the val split (trainers/evaluate.py); not a score to average.
AP_METRICS = ("AP", "AP50", "AP_r", "AP_c", "AP_f")
# The report's table, side by side per freeze mode; METRICS adds what the JSON rows carry besides.
TABLE_METRICS = (*AP_METRICS, "trainable_share", "peak_memory_mb", "step_time_s", "images_per_s")
METRICS = (*TABLE_METRICS, "train_memory_mb", "head_params", "body_params")


@dataclass
class ReportRow:
    """One trial: what it is (capacity, freeze, seed), how it ended, and its figures."""

    trial_id: str
    capacity: str
    freeze: str
    seed: str
    fate: str | None  # completed, stopped, error, interrupted; None while running
    epochs: int
    planned_epochs: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    label: str = ""
    run_id: str | None = None
    error: str | None = None
    source: str = "mlflow"  # or "storage": MLflow did not know the trial
    fields: dict[str, str] = field(default_factory=dict)  # the capacity's fields, flattened (for labels)
    stop: dict[str, Any] | None = None  # the scheduler's decision (rung, cutoff, value), when known
    decision: str | None = None  # that decision in words (Decision.describe), when known

    @property
    def finished(self) -> bool:
        return self.fate == "completed"

    @property
    def stopped(self) -> bool:
        """Ended early by ASHA or a stop rule: fewer epochs than planned."""
        return self.fate == "stopped"


def _figures(values: dict[str, Any]) -> dict[str, float]:
    """The report's metrics among `values`, an AP of -1 (no such classes) left out."""
    return {
        k: float(values[k])
        for k in METRICS
        if is_number(values.get(k)) and not (k in AP_METRICS and float(values[k]) < 0)
    }


def _capacity_params(params: dict[str, str]) -> dict[str, str]:
    """A run's flattened trial params without the fields the capacity key ignores (trainers/identity.py)."""
    from trainers.identity import NOT_CAPACITY, SPEED_ONLY_NAMES

    ignored = {".".join(path) for path in NOT_CAPACITY}
    return {k: v for k, v in params.items() if k not in ignored and not SPEED_ONLY_NAMES & set(k.split("."))}


def label_capacities(rows: list[ReportRow]) -> None:
    """Each row's label: the capacity fields whose values differ between the sweep's capacities."""
    by_capacity = {row.capacity: row.fields for row in rows}
    keys = sorted({k for fields in by_capacity.values() for k in fields})
    varying = [k for k in keys if len({fields.get(k) for fields in by_capacity.values()}) > 1]
    for row in rows:
        row.label = " ".join(f"{k}={row.fields.get(k)}" for k in varying)


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def row_from_run(run: Any) -> ReportRow:
    """A trial's MLflow run (mlflow.entities.Run) -> ReportRow."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    fate = tags.get("frost.fate")
    return ReportRow(
        trial_id=tags.get("frost.trial_id", run.info.run_id),
        capacity=tags.get("frost.capacity", "?"),
        freeze=tags.get("freeze", "?"),
        seed=tags.get("seed", "?"),
        fate=None if fate in (None, "running") else fate,
        epochs=_int(metrics.get("epoch")) or 0,
        planned_epochs=_int(params.get("train.epochs")),
        metrics=_figures(metrics),
        run_id=run.info.run_id,
        error=tags.get("frost.fate_detail") if fate == "error" else None,
        fields=_capacity_params(params),
    )


def epoch_history(tracking_uri: str, rows: list[ReportRow], metric: str = "AP") -> dict[str, list[tuple]]:
    """trial_id -> [(epoch, value)] of `metric` from MLflow (for the per-epoch plot)."""
    from service.tracking.reads import metric_histories

    return metric_histories(tracking_uri, [(r.trial_id, str(r.run_id)) for r in rows if r.run_id], metric)


def storage_row(trial_dir: Path, record: dict[str, Any]) -> ReportRow | None:
    """A trial MLflow does not know, from its folder (trial.yaml and checkpoint history)."""
    from trainers.config import TrialSpec
    from trainers.files import flatten
    from trainers.identity import capacity_fields, capacity_key

    try:
        spec = TrialSpec.model_validate(load_machine_yaml((trial_dir / "trial.yaml").read_text()))
        history = trial_history(trial_dir)
    except (OSError, yaml.YAMLError, ValueError, Unreadable):
        return None
    last: dict[str, Any] = {}
    for epoch in history:
        last.update(epoch)
    return ReportRow(
        trial_id=trial_dir.name,
        capacity=capacity_key(spec),
        freeze=spec.backbone.freeze,
        seed=str(spec.seed),
        fate=record.get("fate"),
        epochs=_int(last.get("epoch")) or 0,
        planned_epochs=spec.train.epochs,
        metrics=_figures(last),
        source="storage",
        fields={k: str(v) for k, v in flatten(capacity_fields(spec)).items()},
    )


def sweep_rows(folder: SweepFolder) -> list[ReportRow]:
    """Every trial of the sweep: MLflow's runs, then trials only the folder knows; each stopped trial with
    the scheduler's decision (its fields in `stop`, its sentence in `decision`)."""
    tracking = folder.tracking
    rows: list[ReportRow] = []
    if tracking.tracking_uri and tracking.experiment_id and tracking.parent_run_id:
        from service.tracking.reads import child_runs

        try:
            runs = child_runs(tracking.tracking_uri, tracking.experiment_id, tracking.parent_run_id)
            rows = [row_from_run(run) for run in runs]
        except Exception as exc:  # MLflow down: the folder still tells what this machine holds
            log.warning(
                "report: MLflow unreachable (%s: %s); reading the sweep's folder only",
                type(exc).__name__,
                exc,
            )
    known = {row.trial_id for row in rows}
    for trial_dir in folder.trial_dirs():
        if trial_dir.name not in known:
            row = storage_row(trial_dir, tracking.trials.get(trial_dir.name, {}))
            if row is not None:
                rows.append(row)
    decisions = folder.decisions
    for row in rows:
        decision = decisions.get(row.trial_id)
        if decision is not None:
            row.stop, row.decision = dataclasses.asdict(decision), decision.describe()
    label_capacities(rows)
    return sorted(rows, key=lambda r: (r.capacity, r.freeze, r.seed, r.trial_id))
