"""SweepFolder: the one owner of a sweep folder's files, read without Ray or MLflow.

    sweeps/NAME/frost-sweep.yaml         the validated spec the sweep runs (SPEC_FILE)
    sweeps/NAME/tracking.json            trial -> MLflow run map, fates, the parent run (TRACKING_FILE;
                                         written by service/tracking/, read here)
    sweeps/NAME/asha-state.json          ASHA's rungs and decisions (sweeps/asha.py writes, asha_state reads)
    sweeps/NAME/trials/<id>/trial.yaml   each trial's spec, and its checkpoints' per-epoch history

Every reader (`frost status`, the report, the driver's summary, the tracker) goes through one SweepFolder per
command, so each file is read once and a torn or foreign-shaped file is handled in one place: a tracking map
that is not an object reads as empty, a trial record that is not an object is skipped, a history that is not
a list of records raises `Unreadable` for that trial alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sweeps.asha_state import STATE_FILE, Decision, read_decisions
from trainers.files import read_json_or
from trainers.safe_yaml import load_machine_yaml

if TYPE_CHECKING:
    from sweeps.spec import SweepSpec

SPEC_FILE = "frost-sweep.yaml"
TRACKING_FILE = "tracking.json"


class Unreadable(Exception):
    """A trial file that exists but cannot be parsed (torn write, planted garbage)."""


@dataclass(frozen=True)
class TrackingMap:
    """What `tracking.json` says: where the runs are and each trial's record (run id, status, fate)."""

    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    parent_status: str | None = None
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> TrackingMap:
        if not isinstance(data, dict):
            return cls()
        text = {k: data[k] if isinstance(data.get(k), str) else None for k in _TEXT_FIELDS}
        records = data.get("trials")
        trials = {
            str(tid): _typed_record(record)
            for tid, record in (records.items() if isinstance(records, dict) else ())
            if isinstance(record, dict)
        }
        return cls(**text, trials=trials)

    @property
    def running(self) -> bool:
        """The sweep's parent run is open: a driver runs it (or died without closing it)."""
        return self.parent_status == "RUNNING"


_TEXT_FIELDS = ("tracking_uri", "experiment_id", "parent_run_id", "parent_status")
# The fields of a trial's record the readers use, and their types: a value of another type (a list for a
# fate, a string for a step) is dropped as if absent, so no reader indexes or hashes what it cannot.
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "status": (str,),
    "fate": (str,),
    "last_step": (int,),
}


def _typed_record(record: dict[str, Any]) -> dict[str, Any]:
    return {
        str(key): value
        for key, value in record.items()
        if key not in _RECORD_TYPES or (isinstance(value, _RECORD_TYPES[key]) and not isinstance(value, bool))
    }


class SweepFolder:
    """The files of the sweep in `directory` (see the module's docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def spec_path(self) -> Path:
        return self.directory / SPEC_FILE

    @property
    def tracking_path(self) -> Path:
        return self.directory / TRACKING_FILE

    @property
    def asha_state_path(self) -> Path:
        return self.directory / STATE_FILE

    def spec(self) -> SweepSpec:
        """The saved spec, validated (FrostError naming the file when it is not one)."""
        from sweeps.spec import load_sweep_spec

        return load_sweep_spec(self.spec_path)

    @cached_property
    def tracking(self) -> TrackingMap:
        """The tracking map as it was when first asked for (read once per SweepFolder)."""
        return TrackingMap.from_json(read_json_or(self.tracking_path, {}))

    @cached_property
    def decisions(self) -> dict[str, Decision]:
        """ASHA's stops by trial id, as recorded (read once per SweepFolder; {} without ASHA)."""
        return read_decisions(self.asha_state_path)

    def trial_dirs(self) -> list[Path]:
        trials = self.directory / "trials"
        return sorted(p for p in trials.glob("*") if p.is_dir()) if trials.is_dir() else []

    def trial_ids(self) -> list[str]:
        """Every trial the folder knows: the tracking map's and those with a folder."""
        return sorted(set(self.tracking.trials) | {p.name for p in self.trial_dirs()})

    def trial_dir(self, trial_id: str) -> Path:
        return self.directory / "trials" / trial_id


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
        spec = load_machine_yaml((trial_dir / "trial.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    values = {}
    for path in searched:
        node: Any = spec
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        values[path] = node
    return values
