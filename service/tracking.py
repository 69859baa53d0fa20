"""MLflow tracking of sweeps: one parent run per sweep, exactly one child run per trial, across restarts.

Three facts (see stack-notes.md) shape this module:
- Ray's stock `MLflowLoggerCallback` keeps its trial -> run map in memory, so a restored sweep opens a second
  run per unfinished trial. Here the map lives in a JSON state file next to the sweep (`tracking.json`), and
  every run also carries `frost.sweep_uid` / `frost.trial_id` tags, so a run created just before a crash
  (but not yet recorded) is found again instead of duplicated.
- SQLite fails with concurrent writers, so the driver is the single writer: `MlflowTrackingCallback` is a
  Tune callback (it runs in the driver), never code inside the trials.
- MLflow's client blocks in its own HTTP retries while the server is down, which stalled whole sweeps. So the
  driver never calls MLflow: each call becomes an operation appended to a durable outbox
  (`tracking.outbox.jsonl`, fsynced) and put on a queue; ONE background thread performs the operations in
  order, retrying with back-off until the store answers. An outage delays the runs, never the training, and a
  driver killed with operations pending replays them when the state file is next opened.

Run status: RUNNING while a trial trains; FINISHED for completed / stopped (early-stopped by the scheduler);
FAILED for error; KILLED for interrupted (the sweep stopped with the trial unfinished; a resume reopens the
same run as RUNNING). Tags `frost.fate` and `frost.fate_detail` say why.
"""

from __future__ import annotations

import collections
import json
import logging
import numbers
import os
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ray import tune

from trainers.errors import FrostError

log = logging.getLogger(__name__)

STATE_VERSION = 1
FATES = ("completed", "stopped", "error", "interrupted")
_FATE_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "error": "FAILED", "interrupted": "KILLED"}
_STATUS_FATE = {"FINISHED": "completed", "FAILED": "error", "KILLED": "interrupted"}

# MLflow limits (mlflow.utils.validation): keys <= 250 chars of [\w./ :-], params <= 6000 chars,
# tags <= 8000, <= 100 params or tags per batch.
_KEY_BAD_CHARS = re.compile(r"[^\w./ :-]")
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_BATCH = 100

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


# --------------------------------------------------------------------------------------------------------
# Tracking URIs


def default_tracking_uri(root: Path) -> str:
    """The embedded default store: SQLite in the project folder."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def embedded_artifact_root(tracking_uri: str) -> str | None:
    """`<root>/mlartifacts` for a SQLite store at `<root>/mlflow.db`; None when a server decides."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri.removeprefix("sqlite:///"))
    return str(db_path.resolve().parent / "mlartifacts")


def mlflow_ui_command(tracking_uri: str, artifact_root: str | None = None) -> str:
    """The one command that shows the runs of `tracking_uri` in a browser.

    An http(s) URI is a tracking server, which serves the UI itself: the answer is the address to open.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    parts = ["mlflow", "ui", "--backend-store-uri", tracking_uri]
    artifact_root = artifact_root or embedded_artifact_root(tracking_uri)
    if artifact_root:
        parts += ["--default-artifact-root", artifact_root]
    parts += ["--host", "127.0.0.1"]
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------------------------------------
# Small value helpers


def _key(name: str) -> str:
    return _KEY_BAD_CHARS.sub("_", str(name))[:_MAX_KEY]


def _now_ms() -> int:
    return int(time.time() * 1000)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries as floats (bools, strings, nested values dropped; NaN kept, MLflow stores it)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[_key(name)] = float(value)
    return out


def _chunks(items: list, size: int = _BATCH) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _is_permanent(exc: Exception) -> bool:
    if isinstance(exc, (_Unappliable, FileNotFoundError)):  # a folder that is gone will not come back
        return True
    return getattr(exc, "error_code", None) in _PERMANENT_ERROR_CODES


class _Unappliable(Exception):
    """An operation that cannot apply (its run was never created): dropped, not retried."""


class _Abandoned(Exception):
    """close() gave up on the operation in flight (it stays in the outbox for the next open)."""


# --------------------------------------------------------------------------------------------------------
# SweepTracker


class SweepTracker:
    """MLflow runs of one sweep, written by one background thread, recorded in a JSON state file.

    Every public method returns at once (except `flush`, `close` and the optional waits of the two
    `start_*`): it appends an operation to the outbox and the queue. Operations are applied in order.

    The state file holds what has been applied: experiment id, parent run id, and per trial
    {run_id, last_step, status, fate}. Its outbox holds what has been asked but not yet applied.
    """

    def __init__(
        self,
        state_path: Path | str,
        tracking_uri: str,
        *,
        artifact_root: str | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        """`artifact_root`: artifact location of an experiment this tracker creates (default: the embedded
        store's `<root>/mlartifacts` for SQLite, the server's choice otherwise)."""
        self.state_path = Path(state_path).resolve()
        self.outbox_path = self.state_path.with_name(f"{self.state_path.stem}.outbox.jsonl")
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root or embedded_artifact_root(tracking_uri)
        self.max_backoff_s = max_backoff_s
        self._cond = threading.Condition()
        self._state = self._load_state()
        self._queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        # Driver-side view: the applied state plus every queued operation (what the driver has asked for).
        self._intent: dict[str, dict[str, Any]] = {
            tid: {"last_step": rec.get("last_step"), "fate": rec.get("fate")}
            for tid, rec in self._state["trials"].items()
        }
        self._next_seq = self._state["done_seq"] + 1
        self._replay_outbox()
        self._abandon = threading.Event()
        self._closed = False
        self._client: Any = None
        self._worker = threading.Thread(target=self._drain, name="frost-mlflow-tracker", daemon=True)
        self._worker.start()

    # ---- state and outbox ------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "version": STATE_VERSION,
                "sweep_uid": uuid.uuid4().hex,
                "tracking_uri": self.tracking_uri,
                "experiment_id": None,
                "parent_run_id": None,
                "parent_status": None,
                "trials": {},
                "done_seq": 0,
            }
            # Written at once: the sweep uid must be stable before any run carrying it is created.
            _write_json_atomic(self.state_path, state)
            return state
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FrostError(f"{self.state_path}: unreadable tracking state ({exc})") from None
        if state.get("tracking_uri") != self.tracking_uri:
            raise FrostError(
                f"{self.state_path}: this sweep's runs live in {state.get('tracking_uri')!r}, not in "
                f"{self.tracking_uri!r}; resume it with the same tracking URI"
            )
        return state

    def _replay_outbox(self) -> None:
        """Queue the operations a previous driver asked for but did not see applied."""
        if not self.outbox_path.exists():
            return
        for line in self.outbox_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
            seq = entry["seq"]
            if seq <= self._state["done_seq"]:
                continue
            self._queue.append((seq, entry["op"]))
            self._intend(entry["op"])
            self._next_seq = max(self._next_seq, seq + 1)
        if self._queue:
            log.info(
                "tracking: replaying %d pending MLflow operations from %s", len(self._queue), self.outbox_path
            )

    def _save_state(self) -> None:
        _write_json_atomic(self.state_path, self._state)

    def _enqueue(self, op: dict[str, Any]) -> int:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"tracker for {self.state_path} is closed")
            seq = self._next_seq
            self._next_seq += 1
            # Durable before queued: a driver killed now replays the operation on the next open.
            with self.outbox_path.open("a") as fh:
                fh.write(json.dumps({"seq": seq, "op": op}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._queue.append((seq, op))
            self._intend(op)
            self._cond.notify_all()
            return seq

    def _intend(self, op: dict[str, Any]) -> None:
        """Fold an operation into the driver-side view (same rules as the worker, without MLflow)."""
        kind = op["op"]
        if kind == "start_trial":
            self._intent.setdefault(op["trial_id"], {"last_step": None})["fate"] = None
        elif kind == "log":
            rec = self._intent.setdefault(op["trial_id"], {"last_step": None, "fate": None})
            rec["last_step"] = op["step"] if rec["last_step"] is None else max(rec["last_step"], op["step"])
        elif kind == "end_trial":
            self._intent.setdefault(op["trial_id"], {"last_step": None})["fate"] = op["fate"]
        elif kind == "interrupt":
            for rec in self._intent.values():
                if rec.get("fate") is None:
                    rec["fate"] = "interrupted"

    # ---- public API: driver side ---------------------------------------------------------------------

    def start_sweep(
        self,
        name: str,
        experiment: str,
        spec_yaml: str,
        spec_hash: str,
        search_space: dict[str, str],
        *,
        wait_s: float = 10.0,
    ) -> str | None:
        """Create the parent run, or re-attach the recorded one (status back to RUNNING).

        Returns the parent run id once applied (waiting at most `wait_s`), else None: an unreachable
        tracking server must not keep a sweep from starting.
        """
        op = {
            "op": "start_sweep",
            "name": name,
            "experiment": experiment,
            "spec_yaml": spec_yaml,
            "spec_hash": spec_hash,
            "search_space": {str(k): str(v) for k, v in search_space.items()},
        }
        self._wait_applied(self._enqueue(op), wait_s)
        return self.parent_run_id

    def start_trial(
        self,
        trial_id: str,
        params: dict[str, Any],
        tags: dict[str, str],
        run_name: str,
        *,
        wait_s: float = 0.0,
    ) -> str | None:
        """Create the trial's child run once; later (or after a restart) re-attach it, RUNNING again.

        Returns the run id if it is recorded (or becomes so within `wait_s`), else None.
        """
        op = {
            "op": "start_trial",
            "trial_id": trial_id,
            "params": {_key(k): str(v)[:_MAX_PARAM_VALUE] for k, v in params.items()},
            "tags": {_key(k): str(v)[:_MAX_TAG_VALUE] for k, v in tags.items()},
            "run_name": run_name,
        }
        self._wait_applied(self._enqueue(op), wait_s)
        return self.run_id(trial_id)

    def log_epoch(self, trial_id: str, metrics: dict[str, Any], step: int) -> bool:
        """Queue every numeric metric at `step`. A step <= the trial's last one is skipped (returns False):
        a resumed trial re-reports epochs after its checkpoint, and nothing may count twice."""
        step = int(step)
        last = self.last_step(trial_id)
        if last is not None and step <= last:
            return False
        values = numeric_metrics(metrics)
        self._enqueue({"op": "log", "trial_id": trial_id, "step": step, "ts": _now_ms(), "metrics": values})
        return True

    def log_artifacts(self, trial_id: str, local_dir: Path | str, artifact_path: str | None = None) -> None:
        """Upload a folder into the trial's run (when the worker gets there: keep the folder until then)."""
        op = {"op": "artifacts", "trial_id": trial_id, "local_dir": str(local_dir), "path": artifact_path}
        self._enqueue(op)

    def end_trial(self, trial_id: str, fate: str, message: str | None = None) -> None:
        """Close the trial's run: fate completed / stopped -> FINISHED, error -> FAILED, interrupted -> KILLED."""
        if fate not in FATES:
            raise ValueError(f"fate must be one of {FATES}, got {fate!r}")
        op = {"op": "end_trial", "trial_id": trial_id, "fate": fate, "message": message, "ts": _now_ms()}
        self._enqueue(op)

    def end_sweep(self, status: str = "FINISHED") -> None:
        """Close the parent run with `status` (FINISHED, FAILED or KILLED)."""
        if status not in _STATUS_FATE:
            raise ValueError(f"status must be one of {tuple(_STATUS_FATE)}, got {status!r}")
        self._enqueue({"op": "end_sweep", "status": status, "ts": _now_ms()})

    def mark_interrupted(self) -> None:
        """Every RUNNING run of this sweep (trials and parent) -> KILLED with fate interrupted."""
        self._enqueue({"op": "interrupt", "ts": _now_ms()})

    # ---- public API: queries and lifecycle -------------------------------------------------------------

    @property
    def parent_run_id(self) -> str | None:
        with self._cond:
            return self._state["parent_run_id"]

    @property
    def experiment_id(self) -> str | None:
        with self._cond:
            return self._state["experiment_id"]

    def run_id(self, trial_id: str) -> str | None:
        """The trial's run id once its creation is applied."""
        with self._cond:
            return self._state["trials"].get(trial_id, {}).get("run_id")

    def knows(self, trial_id: str) -> bool:
        """Whether the driver has asked for this trial's run (applied or not)."""
        with self._cond:
            return trial_id in self._intent

    def fate(self, trial_id: str) -> str | None:
        """The fate the driver gave the trial (None: never started, or running)."""
        with self._cond:
            return self._intent.get(trial_id, {}).get("fate")

    def last_step(self, trial_id: str) -> int | None:
        """The newest step the driver queued for the trial."""
        with self._cond:
            return self._intent.get(trial_id, {}).get("last_step")

    def pending(self) -> int:
        """Operations queued and not yet applied."""
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued operation is applied; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush (at most `timeout`), then stop the worker. Unapplied operations stay in the outbox and are
        replayed by the next tracker opened on this state file. Returns whether everything was applied."""
        drained = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._abandon.set()
            self._cond.notify_all()
        self._worker.join(timeout=5.0)
        _forget_shared(self)
        return drained

    def __enter__(self) -> SweepTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_applied(self, seq: int, timeout: float) -> None:
        if timeout > 0:
            with self._cond:
                self._cond.wait_for(lambda: self._state["done_seq"] >= seq, timeout)

    # ---- worker side ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._abandon.is_set())
                if self._abandon.is_set():
                    return
                seq, op = self._queue[0]
            try:
                self._perform_with_retry(op)
            except _Abandoned:
                return
            with self._cond:
                self._queue.popleft()
                self._state["done_seq"] = seq
                try:
                    self._save_state()
                    if not self._queue:
                        self.outbox_path.write_text("")  # everything applied: the outbox starts over
                except OSError as exc:  # the next save records it; a replay is idempotent meanwhile
                    log.warning("tracking: could not save %s: %s", self.state_path, exc)
                self._cond.notify_all()

    def _perform_with_retry(self, op: dict[str, Any]) -> None:
        attempt = 0
        while True:
            try:
                self._perform(op)
                return
            except Exception as exc:
                if _is_permanent(exc):
                    log.warning("tracking: dropped %s for %s: %s", op["op"], op.get("trial_id", "sweep"), exc)
                    return
                delay = min(0.5 * 2**attempt, self.max_backoff_s)
                log.warning(
                    "tracking: %s failed (%s: %s); retry %d in %.1f s",
                    op["op"],
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                    attempt + 1,
                    delay,
                )
                if self._abandon.wait(delay):
                    raise _Abandoned from exc
                attempt += 1

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _perform(self, op: dict[str, Any]) -> None:
        handler = {
            "start_sweep": self._apply_start_sweep,
            "start_trial": self._apply_start_trial,
            "log": self._apply_log,
            "artifacts": self._apply_artifacts,
            "end_trial": self._apply_end_trial,
            "end_sweep": self._apply_end_sweep,
            "interrupt": self._apply_interrupt,
        }[op["op"]]
        handler(op)

    def _record(self, update: Callable[[dict[str, Any]], None]) -> None:
        """Apply `update` to the state under the lock and persist it (each step of an operation is saved
        as soon as MLflow has it, so a retried operation resumes rather than repeats)."""
        with self._cond:
            update(self._state)
            self._save_state()

    def _ensure_experiment(self, name: str) -> str:
        if self._state["experiment_id"]:
            return self._state["experiment_id"]
        client = self._mlflow()
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(name, artifact_location=self.artifact_root)
            except Exception as exc:  # created by someone else meanwhile
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            experiment_id = experiment.experiment_id
        self._record(lambda s: s.update(experiment_id=experiment_id))
        return experiment_id

    def _find_run(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        """A run created before a crash but never recorded, found by its identifying tags."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self._mlflow().search_runs([experiment_id], filter_string=where, max_results=1)
        return runs[0].info.run_id if runs else None

    def _log_params_and_tags(
        self, run_id: str, params: dict[str, str] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        from mlflow.entities import Param, RunTag

        client = self._mlflow()
        for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()]):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()]):
            client.log_batch(run_id, tags=chunk)

    def _reopen(self, run_id: str, extra_tags: dict[str, str], run_name: str | None = None) -> None:
        self._mlflow().update_run(run_id, status="RUNNING", name=run_name)
        self._log_params_and_tags(run_id, tags={"frost.fate": "running", **extra_tags})

    def _apply_start_sweep(self, op: dict[str, Any]) -> None:
        experiment_id = self._ensure_experiment(op["experiment"])
        uid = self._state["sweep_uid"]
        parent = self._state["parent_run_id"]
        if parent:
            self._reopen(parent, {"frost.fate_detail": "resumed"})
        else:
            identity = {"frost.sweep_uid": uid, "frost.kind": "sweep"}
            parent = self._find_run(experiment_id, identity)
            tags = {
                **identity,
                "frost.sweep": op["name"],
                "frost.spec_hash": op["spec_hash"],
                "frost.fate": "running",
            }
            if parent is None:
                parent = self._mlflow().create_run(experiment_id, tags=tags, run_name=op["name"]).info.run_id
            self._record(lambda s: s.update(parent_run_id=parent))
            params = {_key(k): v[:_MAX_PARAM_VALUE] for k, v in op["search_space"].items()}
            self._log_params_and_tags(parent, params=params)
            self._mlflow().log_text(parent, op["spec_yaml"], "sweep.yaml")
        self._record(lambda s: s.update(parent_status="RUNNING"))

    def _apply_start_trial(self, op: dict[str, Any]) -> None:
        parent = self._state["parent_run_id"]
        experiment_id = self._state["experiment_id"]
        if not parent or not experiment_id:
            raise _Unappliable(f"trial {op['trial_id']}: start_sweep must come before start_trial")
        trial_id = op["trial_id"]
        record = self._state["trials"].get(trial_id)
        if record and record.get("run_id"):
            # Params are immutable in MLflow: a re-attached run keeps the ones it was created with.
            self._reopen(record["run_id"], {**op["tags"], "frost.fate_detail": ""}, op["run_name"])
            run_id = record["run_id"]
        else:
            identity = {"frost.sweep_uid": self._state["sweep_uid"], "frost.trial_id": trial_id}
            run_id = self._find_run(experiment_id, identity)
            tags = {
                **op["tags"],
                **identity,
                "mlflow.parentRunId": parent,
                "frost.kind": "trial",
                "frost.fate": "running",
            }
            if run_id is None:
                run_id = (
                    self._mlflow().create_run(experiment_id, tags=tags, run_name=op["run_name"]).info.run_id
                )
            self._record(
                lambda s: s["trials"].setdefault(trial_id, {"last_step": None}).update(run_id=run_id)
            )
            self._log_params_and_tags(run_id, params=op["params"])
        self._record(lambda s: s["trials"][trial_id].update(status="RUNNING", fate=None))

    def _trial_run(self, op: dict[str, Any]) -> tuple[dict[str, Any], str]:
        record = self._state["trials"].get(op["trial_id"])
        if not record or not record.get("run_id"):
            raise _Unappliable(f"trial {op['trial_id']}: {op['op']} before its run was started")
        return record, record["run_id"]

    def _apply_log(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        record, run_id = self._trial_run(op)
        last = record.get("last_step")
        if last is not None and op["step"] <= last:  # replayed after a crash: already in MLflow
            return
        metrics = [Metric(k, v, op["ts"], op["step"]) for k, v in op["metrics"].items()]
        for chunk in _chunks(metrics, 1000):
            self._mlflow().log_batch(run_id, metrics=chunk)
        self._record(lambda s: s["trials"][op["trial_id"]].update(last_step=op["step"]))

    def _apply_artifacts(self, op: dict[str, Any]) -> None:
        _, run_id = self._trial_run(op)
        if not Path(op["local_dir"]).is_dir():
            raise FileNotFoundError(op["local_dir"])
        self._mlflow().log_artifacts(run_id, op["local_dir"], op["path"])

    def _terminate(self, run_id: str, fate: str, detail: str | None, end_ms: int) -> None:
        tags = {"frost.fate": fate, "frost.fate_detail": (detail or "")[:_MAX_TAG_VALUE]}
        self._log_params_and_tags(run_id, tags=tags)
        self._mlflow().set_terminated(run_id, status=_FATE_STATUS[fate], end_time=end_ms)

    def _apply_end_trial(self, op: dict[str, Any]) -> None:
        _, run_id = self._trial_run(op)
        self._terminate(run_id, op["fate"], op["message"], op["ts"])
        status = _FATE_STATUS[op["fate"]]
        self._record(lambda s: s["trials"][op["trial_id"]].update(status=status, fate=op["fate"]))

    def _apply_end_sweep(self, op: dict[str, Any]) -> None:
        parent = self._state["parent_run_id"]
        if not parent:
            raise _Unappliable("end_sweep before start_sweep")
        self._terminate(parent, _STATUS_FATE[op["status"]], None, op["ts"])
        self._record(lambda s: s.update(parent_status=op["status"]))

    def _apply_interrupt(self, op: dict[str, Any]) -> None:
        running = [tid for tid, rec in self._state["trials"].items() if rec.get("status") == "RUNNING"]
        for trial_id in running:
            run_id = self._state["trials"][trial_id]["run_id"]
            self._terminate(run_id, "interrupted", "sweep stopped before the trial finished", op["ts"])
            self._record(lambda s, t=trial_id: s["trials"][t].update(status="KILLED", fate="interrupted"))
        parent = self._state["parent_run_id"]
        if parent and self._state["parent_status"] == "RUNNING":
            self._terminate(parent, "interrupted", "sweep stopped before all trials finished", op["ts"])
            self._record(lambda s: s.update(parent_status="KILLED"))


# One tracker per state file per process: Tune may copy a callback (deepcopy, pickling), and two trackers
# draining into the same state file would race.
_SHARED: dict[tuple[Path, str], SweepTracker] = {}
_SHARED_LOCK = threading.Lock()


def shared_tracker(
    state_path: Path | str,
    tracking_uri: str,
    *,
    artifact_root: str | None = None,
    max_backoff_s: float = 30.0,
) -> SweepTracker:
    """The open tracker of this state file in this process, or a new one."""
    key = (Path(state_path).resolve(), tracking_uri)
    with _SHARED_LOCK:
        tracker = _SHARED.get(key)
        if tracker is None:
            tracker = SweepTracker(
                state_path, tracking_uri, artifact_root=artifact_root, max_backoff_s=max_backoff_s
            )
            _SHARED[key] = tracker
        return tracker


def _forget_shared(tracker: SweepTracker) -> None:
    with _SHARED_LOCK:
        for key, value in list(_SHARED.items()):
            if value is tracker:
                del _SHARED[key]


# --------------------------------------------------------------------------------------------------------
# The Tune callback (runs in the driver)

# Tune's own bookkeeping in every result: not metrics of the trial.
_TUNE_RESULT_KEYS = frozenset(
    {
        "training_iteration",
        "time_total_s",
        "episodes_total",
        "timesteps_total",
        "node_ip",
        "hostname",
        "pid",
        "time_this_iter_s",
        "timestamp",
        "date",
        "time_since_restore",
        "timesteps_since_restore",
        "iterations_since_restore",
        "config",
        "checkpoint_dir_name",
        "done",
        "trial_id",
        "experiment_tag",
        "should_checkpoint",
    }
)

ParamsFn = Callable[[dict[str, Any]], "tuple[dict[str, Any], dict[str, str], str]"]


def default_params(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str]:
    """Flattened config as params, no tags, no name (the callback then names the run after the trial)."""
    return flatten(config), {}, ""


def _config_epochs(config: dict[str, Any]) -> int | None:
    """`train.epochs` of a nested or flattened trial config, if there."""
    value = config.get("train", {}).get("epochs") if isinstance(config.get("train"), dict) else None
    value = value if value is not None else config.get("train.epochs")
    return int(value) if isinstance(value, numbers.Real) else None


def _trial_error_message(trial: Any) -> str:
    """The trial's exception as `Type: message` (the root cause, not Ray's wrapper), else the error file."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # an unreadable pickle must not break the sweep's bookkeeping
        error = None
    cause = getattr(error, "cause", None) or error
    if cause is not None:
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if trial.error_file and Path(trial.error_file).exists():
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    return "unknown error"


class MlflowTrackingCallback(tune.Callback):
    """Tune callback: parent run at setup, one child run per trial, epochs as steps, fates as tags.

    Picklable: only its arguments are pickled (Tune stores callbacks in the experiment state and brings them
    back by unpickling on `Tuner.restore`); the tracker is re-opened lazily from the state file.

    `max_epochs` tells a trial that ran to the end (fate completed) from one the scheduler or a stop rule
    ended early (fate stopped): an int, a function of the trial config, or None to read `train.epochs` from
    the config (nested or flattened). When it cannot be known, the fate is completed.
    `params_fn(config) -> (params, tags, run_name)` derives what each trial's run records; an empty run name
    falls back to Tune's trial name. Keep it picklable (a module-level function or a functools.partial).
    """

    def __init__(
        self,
        state_path: Path | str,
        tracking_uri: str,
        *,
        experiment: str,
        sweep_name: str,
        spec_yaml: str,
        spec_hash: str,
        search_space: dict[str, str] | None = None,
        params_fn: ParamsFn = default_params,
        max_epochs: int | Callable[[dict[str, Any]], int] | None = None,
        artifact_root: str | None = None,
        log_final_checkpoint: bool = False,
        flush_timeout_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.state_path = Path(state_path)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.spec_yaml = spec_yaml
        self.spec_hash = spec_hash
        self.search_space = dict(search_space or {})
        self.params_fn = params_fn
        self.artifact_root = artifact_root
        self.max_epochs = max_epochs
        self.log_final_checkpoint = log_final_checkpoint
        self.flush_timeout_s = flush_timeout_s
        self.max_backoff_s = max_backoff_s
        self._tracker: SweepTracker | None = None

    # ---- pickling: arguments only ----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tracker"] = None  # threads, locks and clients do not pickle; the state file is the truth
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tracker = None

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None or self._tracker._closed:
            self._tracker = shared_tracker(
                self.state_path,
                self.tracking_uri,
                artifact_root=self.artifact_root,
                max_backoff_s=self.max_backoff_s,
            )
        return self._tracker

    # ---- Tune hooks ------------------------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        self.tracker.start_sweep(
            self.sweep_name, self.experiment, self.spec_yaml, self.spec_hash, self.search_space, wait_s=0
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        # A result for a run the tracker does not know, or one closed as interrupted (a resumed trial whose
        # start Tune did not announce), (re)opens it first.
        if not self.tracker.knows(trial.trial_id) or self.tracker.fate(trial.trial_id) == "interrupted":
            self._start(trial)
        step = result.get("epoch", result.get("training_iteration"))
        metrics = {k: v for k, v in result.items() if k not in _TUNE_RESULT_KEYS}
        self.tracker.log_epoch(trial.trial_id, metrics, step=int(step))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)
        last = self._last_epoch(trial)
        planned = self._planned_epochs(trial.config)
        if last is None:  # e.g. a pending trial removed when the sweep was stopped
            fate, detail = "stopped", "ended before reporting an epoch"
        elif planned is not None and last < planned:
            fate, detail = "stopped", f"stopped at epoch {last} of {planned} by the scheduler or a stop rule"
        else:
            fate, detail = "completed", f"ran {last} epochs"
        if self.log_final_checkpoint:
            self._log_checkpoint(trial)
        self.tracker.end_trial(trial.trial_id, fate, detail)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)
        self.tracker.end_trial(trial.trial_id, "error", _trial_error_message(trial))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Nothing by default: checkpoints stay in Tune's storage; see `log_final_checkpoint`."""

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Tune calls this when the sweep finishes and when it is interrupted (SIGINT, stop). A trial
        without a fate did not finish: its run and the parent become KILLED, reopened on resume."""
        tracker = self.tracker
        unfinished = [t.trial_id for t in trials if tracker.fate(t.trial_id) is None]
        if unfinished:
            tracker.mark_interrupted()
        else:
            tracker.end_sweep("FINISHED")
        if not tracker.close(self.flush_timeout_s):
            log.warning(
                "tracking: %d MLflow operations still pending; they are kept in %s and sent when the sweep "
                "is next opened",
                tracker.pending(),
                tracker.outbox_path,
            )
        self._tracker = None

    # ---- helpers ---------------------------------------------------------------------------------------

    def _start(self, trial: Any) -> None:
        params, tags, run_name = self.params_fn(trial.config)
        tags = {"frost.sweep": self.sweep_name, **tags}
        self.tracker.start_trial(trial.trial_id, params, tags, run_name or str(trial))

    def _ensure_started(self, trial: Any) -> None:
        if not self.tracker.knows(trial.trial_id):
            self._start(trial)

    def _last_epoch(self, trial: Any) -> int | None:
        epoch = (trial.last_result or {}).get("epoch")
        return int(epoch) if isinstance(epoch, numbers.Real) else self.tracker.last_step(trial.trial_id)

    def _planned_epochs(self, config: dict[str, Any]) -> int | None:
        if self.max_epochs is None:
            return _config_epochs(config)
        if callable(self.max_epochs):
            return int(self.max_epochs(config))
        return int(self.max_epochs)

    def _log_checkpoint(self, trial: Any) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None:
            return
        if getattr(checkpoint.filesystem, "type_name", "local") == "local":
            local = checkpoint.path
        else:  # remote storage: copy next to the state file, kept until the worker has uploaded it
            local = checkpoint.to_directory(str(self.state_path.parent / "mlflow-staging" / trial.trial_id))
        self.tracker.log_artifacts(trial.trial_id, local, "checkpoint")
