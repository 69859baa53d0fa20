"""What a sweep's ASHA state file says, readable without Ray: `frost status` and the report read the stops
recorded there (sweeps/asha.py writes them)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainers.files import read_json_or

# /2: rungs hold one record per configuration (the mean of its replicates), decisions are per configuration.
STATE_FORMAT = "frost.asha/2"
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


@dataclass(frozen=True)
class Decision:
    """Why ASHA stopped a configuration (every replicate of it): at `rung` (epochs) of its `stratum`, its
    `value` of `metric` (as `rung_metric` computes it; with replicates the mean of `replicates`, the rung values
    of the replicates that had reached the rung when it was judged) fell short of `cutoff`, the top
    1/reduction_factor of the other configurations recorded there. `trial_id` is the replicate whose arrival
    at the rung judged it; `trials` every replicate the decision stops."""

    trial_id: str
    stratum: str
    rung: int
    epoch: int
    metric: str
    rung_metric: str
    value: float
    cutoff: float
    configuration: str = ""
    replicates_by: tuple[str, ...] = ()
    replicates: dict[str, float] = field(default_factory=dict)
    trials: tuple[str, ...] = ()

    def tags(self) -> dict[str, str]:
        """The MLflow tags of every stopped replicate's run (mean and replicates only with replicate paths)."""
        tags = {
            "frost.asha.stratum": self.stratum,
            "frost.asha.rung": str(self.rung),
            "frost.asha.cutoff": repr(self.cutoff),
            "frost.asha.value": repr(self.value),
        }
        if self.replicates_by:
            tags["frost.asha.configuration"] = self.configuration
            tags["frost.asha.mean"] = repr(self.value)
            tags["frost.asha.replicates"] = json.dumps(self.replicates, sort_keys=True)
        return tags

    def describe(self) -> str:
        """One sentence, from the decision alone: `stopped at rung 2 (epoch 2) among finetune: AP 0.042 (mean
        of 3 seeds) < cutoff 0.050`."""
        where = "" if self.stratum == UNSTRATIFIED else f" among {self.stratum}"
        count = len(self.replicates)
        word = "seeds" if self.replicates_by == ("seed",) else "replicates"
        mean = f" (mean of {count} {word})" if self.replicates_by and count > 1 else ""
        # Mode min stops a value above its cutoff; a NaN cutoff cannot happen (Ray ignores NaN records).
        relation = ">" if self.value > self.cutoff else "<"
        return (
            f"stopped at rung {self.rung} (epoch {self.epoch}){where}: "
            f"{self.metric} {self.value:.3f}{mean} {relation} cutoff {self.cutoff:.3f}"
        )


def read_decisions(state_path: str | Path) -> dict[str, Decision]:
    """The stops recorded in a sweep's ASHA state, by trial id: every replicate a decision stopped ({} when
    there is none or it is unreadable: status views must not fail on it)."""
    state = read_json_or(Path(state_path), {})
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return {}
    try:
        decisions = [decision_from_json(item) for item in state.get("decisions", {}).values()]
    except (TypeError, KeyError, AttributeError, ValueError):
        return {}
    return {trial: decision for decision in decisions for trial in decision.trials}


def decision_to_json(decision: Decision) -> dict[str, Any]:
    data = asdict(decision)
    data["value"], data["cutoff"] = _nan_to_none(decision.value), _nan_to_none(decision.cutoff)
    data["replicates"] = {t: _nan_to_none(v) for t, v in decision.replicates.items()}
    data["replicates_by"], data["trials"] = list(decision.replicates_by), list(decision.trials)
    return data


def decision_from_json(saved: dict[str, Any]) -> Decision:
    fields: dict[str, Any] = dict(saved)
    fields["value"], fields["cutoff"] = _none_to_nan(fields["value"]), _none_to_nan(fields["cutoff"])
    fields["replicates"] = {str(t): _none_to_nan(v) for t, v in fields["replicates"].items()}
    fields["replicates_by"] = tuple(str(p) for p in fields["replicates_by"])
    fields["trials"] = tuple(str(t) for t in fields["trials"])
    return Decision(**fields)


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value
