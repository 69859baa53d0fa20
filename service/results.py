"""Typed results: what the driver, `frost status`, the plots and the report read about a sweep's trials.

A `TrialRow` is one trial as the summaries show it; a `SweepSummary` is the sweep. Their JSON form (the last
line of `frost run --json`, `frost status --json`) keys the trial's best ranking metric by the metric's name
(`"AP": 0.41`), as scripts read it. The rule "best value by mode" lives here once: `best_value`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# A trial's fate (as the tracker records it) -> the state the summaries report.
FATE_STATE = {
    "completed": "TERMINATED",
    "stopped": "TERMINATED",
    "error": "ERROR",
    "interrupted": "INTERRUPTED",
}
FINISHED_STATES = ("TERMINATED", "ERROR")


def is_number(value: Any) -> bool:
    """A real, finite-or-not number that is not a bool and not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def best_value(values: Iterable[Any], mode: str) -> float | None:
    """The best of `values` for `mode` ("max" or "min"), ignoring non-numbers and NaN; None when none."""
    numbers = [float(v) for v in values if is_number(v)]
    if not numbers:
        return None
    return max(numbers) if mode == "max" else min(numbers)


def is_better(value: float, than: float | None, mode: str) -> bool:
    return than is None or (value > than if mode == "max" else value < than)


@dataclass
class TrialRow:
    trial_id: str
    state: str  # PENDING, RUNNING, TERMINATED, ERROR, INTERRUPTED, UNREADABLE
    fate: str | None = None  # completed, stopped, error, interrupted (the tracker's), None while open
    epochs: int = 0
    mlflow_run_id: str | None = None
    best: float | None = None  # best value of the sweep's ranking metric over the trial's epochs
    config: dict[str, Any] = field(default_factory=dict)  # the searched fields' values
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the scheduler's decision

    def to_json(self, metric: str) -> dict[str, Any]:
        data = {
            "trial_id": self.trial_id,
            "state": self.state,
            "fate": self.fate,
            "epochs": self.epochs,
            "mlflow_run_id": self.mlflow_run_id,
            metric: self.best,
            "config": self.config,
            "error": self.error,
        }
        data.update(self.extra)
        return data


@dataclass
class SweepSummary:
    name: str
    metric: str
    mode: str
    trials: list[TrialRow]
    expected_trials: int | None = None
    state: str | None = None  # COMPLETE, RUNNING, INCOMPLETE (from storage); None right after a run
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    plot: str | None = None
    job: dict[str, Any] | None = None
    # The frozen-feature cache's one-time cost, summed over the trials that built it (docs/feature-cache.md).
    cache_build_s: float = 0.0
    cache_bytes: int = 0

    @property
    def best(self) -> TrialRow | None:
        scored = [t for t in self.trials if is_number(t.best)]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: float(t.best))  # type: ignore[arg-type]

    @property
    def ok(self) -> bool:
        """No trial errored."""
        return not any(t.state == "ERROR" for t in self.trials)

    @property
    def interrupted(self) -> bool:
        """Trials cut off, or never started (Ray Tune leaves pending trials out of its results after a stop)."""
        short = self.expected_trials is not None and len(self.trials) < self.expected_trials
        return short or any(t.state == "INTERRUPTED" for t in self.trials)

    @property
    def complete(self) -> bool:
        finished = all(t.state in FINISHED_STATES for t in self.trials)
        return bool(self.trials) and finished and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        best = self.best
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "metric": self.metric,
            "mode": self.mode,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "parent_run_id": self.parent_run_id,
            "trials": [t.to_json(self.metric) for t in self.trials],
            "best": best.to_json(self.metric) if best else None,
            "ok": self.ok,
            "interrupted": self.interrupted,
        }
        if self.cache_bytes:
            data["cache_build_s"], data["cache_bytes"] = round(self.cache_build_s, 3), self.cache_bytes
        if self.plot is not None:
            data["plot"] = self.plot
        if self.job is not None:
            data["job"] = self.job
        return data

    def trial_lines(self) -> list[str]:
        """One line per trial, as `frost status` and the end of `frost run` print them."""
        lines = []
        for trial in self.trials:
            shown = f"{trial.best:.4f}" if is_number(trial.best) else "-"
            why = f"  ({trial.extra['stop_reason']})" if trial.extra.get("stop_reason") else ""
            lines.append(
                f"  {trial.trial_id}  {trial.state:<11} {trial.fate or '':<11} epochs {trial.epochs:>3}  "
                f"{self.metric} {shown}  {trial.config}{why}"
            )
        return lines

    def best_line(self) -> str | None:
        best = self.best
        if best is None or best.best is None:
            return None
        run = f" (MLflow run {best.mlflow_run_id})" if best.mlflow_run_id else ""
        return f"{best.trial_id} {self.metric}={best.best:.4f} {best.config}{run}"
