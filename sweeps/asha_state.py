"""What a sweep's ASHA state file says, readable without Ray: `frost status` and the report read the stops
recorded there (sweeps/asha.py writes them)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainers.files import read_json_or
from trainers.logs import log

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
    there is none or it is unreadable: status views must not fail on it). A decision of the wrong shape (a
    number written as a string, a missing field) is skipped, saying so in one line, not guessed at."""
    state = read_json_or(Path(state_path), {})
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return {}
    saved = state.get("decisions")
    if not isinstance(saved, dict):
        return {}
    decisions, skipped = [], []
    for name, item in saved.items():
        try:
            decisions.append(decision_from_json(item))
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            skipped.append(f"{str(name)[:80]} ({exc})")
    if skipped:
        log.warning(
            "%s: %d ASHA decision(s) of the wrong shape skipped: %s",
            state_path,
            len(skipped),
            "; ".join(skipped[:3]),
        )
    return {trial: decision for decision in decisions for trial in decision.trials}


def decision_to_json(decision: Decision) -> dict[str, Any]:
    data = asdict(decision)
    data["value"], data["cutoff"] = _nan_to_none(decision.value), _nan_to_none(decision.cutoff)
    data["replicates"] = {t: _nan_to_none(v) for t, v in decision.replicates.items()}
    data["replicates_by"], data["trials"] = list(decision.replicates_by), list(decision.trials)
    return data


_TEXT = ("trial_id", "stratum", "metric", "rung_metric")
_COUNTS = ("rung", "epoch")


def _number_or_none(value: Any, what: str) -> float:
    """A JSON number (or null, a NaN written strictly): a string that looks like one is not accepted, since
    the file's writer never writes one (such a file was edited or planted)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{what} is {type(value).__name__}, not a number")
    return _none_to_nan(value)


def decision_from_json(saved: dict[str, Any]) -> Decision:
    """A decision as decision_to_json wrote it; ValueError / TypeError / KeyError when it is not one."""
    if not isinstance(saved, dict):
        raise TypeError(f"a {type(saved).__name__}, not an object")
    fields: dict[str, Any] = dict(saved)
    for name in _TEXT:
        if not isinstance(fields[name], str):
            raise ValueError(f"{name} is {type(fields[name]).__name__}, not text")
    for name in _COUNTS:
        if isinstance(fields[name], bool) or not isinstance(fields[name], int):
            raise ValueError(f"{name} is {type(fields[name]).__name__}, not an integer")
    if not isinstance(fields.get("configuration", ""), str):
        raise ValueError("configuration is not text")
    fields["value"] = _number_or_none(fields["value"], "value")
    fields["cutoff"] = _number_or_none(fields["cutoff"], "cutoff")
    fields["replicates"] = {
        str(t): _number_or_none(v, f"replicates[{t}]") for t, v in fields["replicates"].items()
    }
    for name in ("replicates_by", "trials"):
        if not isinstance(fields[name], list) or not all(isinstance(p, str) for p in fields[name]):
            raise ValueError(f"{name} is not a list of text")
        fields[name] = tuple(fields[name])
    return Decision(**fields)


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value
