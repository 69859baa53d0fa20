"""The tracker's operations, typed, and the one set of rules that folds them into a sweep's ledger.

An operation is made (and validated) in the driver, written to the outbox, and applied to MLflow later by the
tracker's thread: a malformed one fails where it is made, not in that thread. The same `fold` keeps both views
of a sweep: what the driver has asked for (every queued operation) and what MLflow has applied (the state file).
"""

from __future__ import annotations

import numbers
import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

FATES = ("completed", "stopped", "error", "interrupted")
Fate = Literal["completed", "stopped", "error", "interrupted"]
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
FATE_STATUS: dict[str, RunStatus] = {
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "error": "FAILED",
    "interrupted": "KILLED",
}
STATUS_FATE = {"FINISHED": "completed", "FAILED": "error", "KILLED": "interrupted"}

# MLflow limits (mlflow.utils.validation): keys <= 250 chars of [\w./ :-], params <= 6000 chars,
# tags <= 8000, <= 100 params or tags per batch.
_KEY_BAD_CHARS = re.compile(r"[^\w./ :-]")
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
BATCH = 100


def mlflow_key(name: str) -> str:
    return _KEY_BAD_CHARS.sub("_", str(name))[:MAX_KEY]


def params_of(values: dict[str, Any]) -> dict[str, str]:
    return {mlflow_key(k): str(v)[:MAX_PARAM_VALUE] for k, v in values.items()}


def tags_of(values: dict[str, Any]) -> dict[str, str]:
    return {mlflow_key(k): str(v)[:MAX_TAG_VALUE] for k, v in values.items()}


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries as floats (bools, strings, nested values dropped; NaN kept, MLflow stores it)."""
    return {
        mlflow_key(name): float(value)
        for name, value in metrics.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool)
    }


def now_ms() -> int:
    return int(time.time() * 1000)


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartSweep(_Op):
    op: Literal["start_sweep"] = "start_sweep"
    name: str
    experiment: str
    spec_yaml: str
    spec_hash: str
    search_space: dict[str, str] = {}


class StartTrial(_Op):
    op: Literal["start_trial"] = "start_trial"
    trial_id: str
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    run_name: str


class LogEpoch(_Op):
    op: Literal["log"] = "log"
    trial_id: str
    step: int
    ts: int = Field(default_factory=now_ms)
    metrics: dict[str, float]


class SetTags(_Op):
    op: Literal["tags"] = "tags"
    trial_id: str
    tags: dict[str, str]


class LogArtifacts(_Op):
    op: Literal["artifacts"] = "artifacts"
    trial_id: str
    local_dir: str
    path: str | None = None


class EndTrial(_Op):
    op: Literal["end_trial"] = "end_trial"
    trial_id: str
    fate: Fate
    message: str | None = None
    ts: int = Field(default_factory=now_ms)


class EndSweep(_Op):
    op: Literal["end_sweep"] = "end_sweep"
    status: RunStatus
    ts: int = Field(default_factory=now_ms)


class Interrupt(_Op):
    op: Literal["interrupt"] = "interrupt"
    ts: int = Field(default_factory=now_ms)


Operation = Annotated[
    StartSweep | StartTrial | LogEpoch | SetTags | LogArtifacts | EndTrial | EndSweep | Interrupt,
    Field(discriminator="op"),
]
OPERATION = TypeAdapter(Operation)


# --------------------------------------------------------------------------------------------- the ledger
# A ledger is {"parent_status": ..., "trials": {trial_id: {"last_step", "status", "fate", ...}}}: the
# tracker's state file is one (plus MLflow ids), and the driver keeps another of what it has asked for.


def _trial(ledger: dict[str, Any], trial_id: str) -> dict[str, Any]:
    return ledger["trials"].setdefault(trial_id, {"last_step": None, "status": None, "fate": None})


def end_trial_record(record: dict[str, Any], fate: str) -> None:
    record.update(fate=fate, status=FATE_STATUS[fate])


def fold(ledger: dict[str, Any], op: Operation) -> None:
    """The effect of `op` on a ledger: the rules both the driver's view and the applied state follow."""
    if isinstance(op, StartSweep):
        ledger["parent_status"] = "RUNNING"
    elif isinstance(op, StartTrial):
        _trial(ledger, op.trial_id).update(status="RUNNING", fate=None)
    elif isinstance(op, LogEpoch):
        record = _trial(ledger, op.trial_id)
        last = record.get("last_step")
        record["last_step"] = op.step if last is None else max(last, op.step)
    elif isinstance(op, EndTrial):
        end_trial_record(_trial(ledger, op.trial_id), op.fate)
    elif isinstance(op, EndSweep):
        ledger["parent_status"] = op.status
    elif isinstance(op, Interrupt):
        for record in ledger["trials"].values():
            if record.get("status") == "RUNNING":
                end_trial_record(record, "interrupted")
        if ledger.get("parent_status") == "RUNNING":
            ledger["parent_status"] = "KILLED"
