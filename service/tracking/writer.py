"""Applies one tracker operation to MLflow, idempotently.

Each step of an operation is recorded in the state file as soon as MLflow has it, so an operation retried or
replayed after a crash resumes rather than repeats: a run created but not yet recorded is found again by its
identifying tags (`frost.sweep_uid`, `frost.trial_id`), never created twice.

Run status: RUNNING while a trial trains; FINISHED for completed / stopped (early-stopped by the scheduler);
FAILED for error; KILLED for interrupted (the sweep stopped with the trial unfinished; a resume reopens the
same run as RUNNING). Tags `frost.fate` and `frost.fate_detail` say why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.tracking.ops import (
    BATCH,
    FATE_STATUS,
    MAX_TAG_VALUE,
    STATUS_FATE,
    EndSweep,
    EndTrial,
    Interrupt,
    LogArtifacts,
    LogEpoch,
    Operation,
    SetTags,
    StartSweep,
    StartTrial,
    end_trial_record,
    fold,
    params_of,
)

# MLflow 3's UI opens an experiment in its GenAI view (traces, judges) unless the experiment says it holds model
# training runs: with this tag it lands on the runs table, where a sweep's trials and their metrics are.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# MLflow error codes that retrying cannot fix: the operation is dropped (with a warning) so that one bad
# operation does not block every later one. Anything else (connection refused, 5xx, "database is locked")
# is retried with back-off.
_PERMANENT_ERROR_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "BAD_REQUEST",
    "INVALID_STATE",
}

Record = Callable[[Callable[[dict[str, Any]], None]], None]


class Unappliable(Exception):
    """An operation that cannot apply (its run was never created): dropped, not retried."""


def is_permanent(exc: Exception) -> bool:
    if isinstance(exc, (Unappliable, FileNotFoundError)):  # a folder that is gone will not come back
        return True
    return getattr(exc, "error_code", None) in _PERMANENT_ERROR_CODES


def _interrupted(trial_id: str, state: dict[str, Any]) -> None:
    end_trial_record(state["trials"][trial_id], "interrupted")


def _chunks(items: list, size: int = BATCH) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowWriter:
    """`state` is the tracker's applied ledger (read here, changed only through `record`)."""

    def __init__(
        self, tracking_uri: str, artifact_root: str | None, state: dict[str, Any], record: Record
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.state = state
        self.record = record
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def apply(self, op: Operation) -> None:
        if isinstance(op, StartSweep):
            self._start_sweep(op)
        elif isinstance(op, StartTrial):
            self._start_trial(op)
        elif isinstance(op, LogEpoch):
            self._log(op)
        elif isinstance(op, SetTags):
            self.log_params_and_tags(self._run_of(op.trial_id, op.op), tags=op.tags)
        elif isinstance(op, LogArtifacts):
            if not Path(op.local_dir).is_dir():
                raise FileNotFoundError(op.local_dir)
            self.client().log_artifacts(self._run_of(op.trial_id, op.op), op.local_dir, op.path)
        elif isinstance(op, EndTrial):
            self._terminate(self._run_of(op.trial_id, op.op), op.fate, op.message, op.ts)
        elif isinstance(op, EndSweep):
            self._end_sweep(op)
        elif isinstance(op, Interrupt):
            self._interrupt(op)
        self.record(lambda s: fold(s, op))

    # ---- MLflow building blocks ----------------------------------------------------------------------

    def _ensure_experiment(self, name: str) -> str:
        if self.state["experiment_id"]:
            return self.state["experiment_id"]
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(
                    name, artifact_location=self.artifact_root, tags=dict([EXPERIMENT_KIND])
                )
            except Exception as exc:  # created by someone else meanwhile
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        self.record(lambda s: s.update(experiment_id=experiment_id))
        return experiment_id

    def _find_run(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        """A run created before a crash but never recorded, found by its identifying tags."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client().search_runs([experiment_id], filter_string=where, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_params_and_tags(
        self, run_id: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        from mlflow.entities import Param, RunTag

        for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()]):
            self.client().log_batch(run_id, params=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()]):
            self.client().log_batch(run_id, tags=chunk)

    def _reopen(self, run_id: str, extra_tags: dict[str, str], run_name: str | None = None) -> None:
        self.client().update_run(run_id, status="RUNNING", name=run_name)
        self.log_params_and_tags(run_id, tags={"frost.fate": "running", **extra_tags})

    def _run_of(self, trial_id: str, what: str) -> str:
        record = self.state["trials"].get(trial_id)
        if not record or not record.get("run_id"):
            raise Unappliable(f"trial {trial_id}: {what} before its run was started")
        return record["run_id"]

    def _terminate(self, run_id: str, fate: str, detail: str | None, end_ms: int) -> None:
        tags = {"frost.fate": fate, "frost.fate_detail": (detail or "")[:MAX_TAG_VALUE]}
        self.log_params_and_tags(run_id, tags=tags)
        self.client().set_terminated(run_id, status=FATE_STATUS[fate], end_time=end_ms)

    # ---- operations ----------------------------------------------------------------------------------

    def _start_sweep(self, op: StartSweep) -> None:
        experiment_id = self._ensure_experiment(op.experiment)
        parent = self.state["parent_run_id"]
        if parent:
            self._reopen(parent, {"frost.fate_detail": "resumed"})
            return
        identity = {"frost.sweep_uid": self.state["sweep_uid"], "frost.kind": "sweep"}
        parent = self._find_run(experiment_id, identity)
        tags = {**identity, "frost.sweep": op.name, "frost.spec_hash": op.spec_hash, "frost.fate": "running"}
        if parent is None:
            parent = self.client().create_run(experiment_id, tags=tags, run_name=op.name).info.run_id
        self.record(lambda s: s.update(parent_run_id=parent))
        self.log_params_and_tags(parent, params=params_of(op.search_space))
        self.client().log_text(parent, op.spec_yaml, "sweep.yaml")

    def _start_trial(self, op: StartTrial) -> None:
        parent, experiment_id = self.state["parent_run_id"], self.state["experiment_id"]
        if not parent or not experiment_id:
            raise Unappliable(f"trial {op.trial_id}: start_sweep must come before start_trial")
        record = self.state["trials"].get(op.trial_id)
        if record and record.get("run_id"):
            # Params are immutable in MLflow: a re-attached run keeps the ones it was created with.
            self._reopen(record["run_id"], {**op.tags, "frost.fate_detail": ""}, op.run_name)
            return
        identity = {"frost.sweep_uid": self.state["sweep_uid"], "frost.trial_id": op.trial_id}
        run_id = self._find_run(experiment_id, identity)
        tags = {
            **op.tags,
            **identity,
            "mlflow.parentRunId": parent,
            "frost.kind": "trial",
            "frost.fate": "running",
        }
        if run_id is None:
            run_id = self.client().create_run(experiment_id, tags=tags, run_name=op.run_name).info.run_id
        self.record(lambda s: s["trials"].setdefault(op.trial_id, {"last_step": None}).update(run_id=run_id))
        self.log_params_and_tags(run_id, params=op.params)

    def _log(self, op: LogEpoch) -> None:
        from mlflow.entities import Metric

        run_id = self._run_of(op.trial_id, op.op)
        last = self.state["trials"][op.trial_id].get("last_step")
        if last is not None and op.step <= last:  # replayed after a crash: already in MLflow
            return
        metrics = [Metric(k, v, op.ts, op.step) for k, v in op.metrics.items()]
        for chunk in _chunks(metrics, 1000):
            self.client().log_batch(run_id, metrics=chunk)

    def _end_sweep(self, op: EndSweep) -> None:
        parent = self.state["parent_run_id"]
        if not parent:
            raise Unappliable("end_sweep before start_sweep")
        self._terminate(parent, STATUS_FATE[op.status], None, op.ts)

    def _interrupt(self, op: Interrupt) -> None:
        running = [tid for tid, rec in self.state["trials"].items() if rec.get("status") == "RUNNING"]
        for trial_id in running:
            run_id = self.state["trials"][trial_id]["run_id"]
            self._terminate(run_id, "interrupted", "sweep stopped before the trial finished", op.ts)
            self.record(functools.partial(_interrupted, trial_id))
        parent = self.state["parent_run_id"]
        if parent and self.state["parent_status"] == "RUNNING":
            self._terminate(parent, "interrupted", "sweep stopped before all trials finished", op.ts)
