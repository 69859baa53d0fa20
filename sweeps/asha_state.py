"""What a sweep's ASHA state file says, readable without Ray: `frost status` and the report read the stops
recorded there (sweeps/asha.py writes them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.files import read_json_or

STATE_FORMAT = "frost.asha/1"
# The state's file name beside a sweep (the driver's `sweep_dir(...) / STATE_FILE`).
STATE_FILE = "asha-state.json"
# The stratum of every trial when the sweep is not stratified.
UNSTRATIFIED = "(all)"
_REFUSED = (
    "refusing to use it (nothing in it is run). Remove the file to let ASHA start its rungs afresh "
    "(the decisions already made are then forgotten)"
)
# Weight of the newest epoch in the `ema` rung metric: half, so one noisy epoch moves it half as far.
EMA_WEIGHT = 0.5


def json_state_path(path: str | Path) -> Path:
    """Where the state lives: `path`, with a legacy `.pkl` name (sweeps started before the JSON format) read
    as its `.json` sibling, so an old pickle beside a sweep is never opened."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".pkl" else path


@dataclass(frozen=True)
class Decision:
    """Why ASHA stopped a trial: at `rung` (epochs) of its `stratum`, its `value` of `metric` (as `rung_metric`
    computes it) fell short of `cutoff`, the top 1/reduction_factor of the trials recorded there before it."""

    trial_id: str
    stratum: str
    rung: int
    epoch: int
    metric: str
    rung_metric: str
    value: float
    cutoff: float

    def tags(self) -> dict[str, str]:
        """The stopped trial's MLflow tags."""
        return {
            "frost.asha.stratum": self.stratum,
            "frost.asha.rung": str(self.rung),
            "frost.asha.cutoff": repr(self.cutoff),
            "frost.asha.value": repr(self.value),
        }

    def describe(self) -> str:
        """One line for `frost status`."""
        where = "" if self.stratum == UNSTRATIFIED else f" among {self.stratum}"
        return (
            f"stopped at rung {self.rung}{where}: {self.metric} ({self.rung_metric}) "
            f"{self.value:.4f}, cutoff {self.cutoff:.4f}"
        )


def read_decisions(state_path: str | Path) -> dict[str, Decision]:
    """The stops recorded in a sweep's ASHA state, by trial id ({} when there is none or it is unreadable:
    status views must not fail on it)."""
    state = read_json_or(json_state_path(state_path), {})
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return {}
    try:
        return {tid: _decision(item) for tid, item in state.get("decisions", {}).items()}
    except (TypeError, KeyError, AttributeError):
        return {}


def _decision(saved: dict[str, Any]) -> Decision:
    fields: dict[str, Any] = dict(saved)
    fields["value"], fields["cutoff"] = _none_to_nan(fields["value"]), _none_to_nan(fields["cutoff"])
    return Decision(**fields)


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
