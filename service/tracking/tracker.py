"""SweepTracker: the MLflow runs of one sweep, asked for by the driver, written by one background thread.

The driver never calls MLflow itself (MLflow's client blocks in its own HTTP retries while a server is down,
which stalled whole sweeps): each call becomes an operation appended to the durable outbox and queued; ONE
thread applies the operations in order, retrying with back-off until the store answers. An outage delays the
runs, never the training, and a driver killed with operations pending replays them when the state file is
next opened.
"""

from __future__ import annotations

import collections
import copy
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.tracking import ops
from service.tracking.ops import Operation, fold
from service.tracking.outbox import Outbox
from service.tracking.uris import embedded_artifact_root
from service.tracking.writer import MlflowWriter, is_permanent
from trainers.errors import FrostError
from trainers.files import atomic_write_json, read_json
from trainers.logs import log

STATE_VERSION = 1


class _Abandoned(Exception):
    """close() gave up on the operation in flight (it stays in the outbox for the next open)."""


class SweepTracker:
    """MLflow runs of one sweep, recorded in a JSON state file beside it.

    Every public method returns at once (except `flush`, `close` and the optional waits of the two
    `start_*`): it appends an operation to the outbox and the queue. Operations are applied in order.

    The state file holds what has been applied: experiment id, parent run id, and per trial
    {run_id, last_step, status, fate}. The outbox holds what has been asked but not yet applied.
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
        self.outbox = Outbox(self.state_path.with_name(f"{self.state_path.stem}.outbox.jsonl"))
        self.tracking_uri = tracking_uri
        self.max_backoff_s = max_backoff_s
        self._cond = threading.Condition()
        self._state = self._load_state()
        self._writer = MlflowWriter(
            tracking_uri, artifact_root or embedded_artifact_root(tracking_uri), self._state, self._record
        )
        # The driver's view: the applied state folded with every queued operation (what it has asked for).
        self._intent = {
            "parent_status": self._state["parent_status"],
            "trials": copy.deepcopy(self._state["trials"]),
        }
        self._queue: collections.deque[tuple[int, Operation]] = collections.deque()
        self._next_seq = self._state["done_seq"] + 1
        for seq, op in self.outbox.pending(self._state["done_seq"]):
            self._queue.append((seq, op))
            fold(self._intent, op)
            self._next_seq = max(self._next_seq, seq + 1)
        if self._queue:
            log.info(
                "tracking: replaying %d pending MLflow operations from %s", len(self._queue), self.outbox.path
            )
        self._abandon = threading.Event()
        self._closed = False
        self._worker = threading.Thread(target=self._drain, name="frost-mlflow-tracker", daemon=True)
        self._worker.start()

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
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
            atomic_write_json(self.state_path, state)
            return state
        state = read_json(self.state_path, "tracking state")
        records = state.get("trials") if isinstance(state, dict) else None
        if not isinstance(records, dict):
            raise FrostError(f"tracking state {self.state_path}: not a tracking state file")
        foreign = [str(tid)[:80] for tid, record in records.items() if not isinstance(record, dict)]
        if foreign:  # the writer folds operations into these records: one it cannot index is not its own
            raise FrostError(
                f"tracking state {self.state_path}: the record of trial {foreign[0]!r} is not an object; restore "
                "the file, or remove it to open the sweep's MLflow runs afresh"
            )
        if state.get("tracking_uri") != self.tracking_uri:
            raise FrostError(
                f"{self.state_path}: this sweep's runs live in {state.get('tracking_uri')!r}, not in "
                f"{self.tracking_uri!r}; resume it with the same tracking URI"
            )
        return state

    def _record(self, update: Callable[[dict[str, Any]], None]) -> None:
        """Apply `update` to the applied state under the lock and persist it."""
        with self._cond:
            update(self._state)
            atomic_write_json(self.state_path, self._state)

    def _enqueue(self, op: Operation) -> int:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"tracker for {self.state_path} is closed")
            seq = self._next_seq
            self._next_seq += 1
            self.outbox.append(seq, op)
            self._queue.append((seq, op))
            fold(self._intent, op)
            self._cond.notify_all()
            return seq

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
        space = {str(k): str(v) for k, v in search_space.items()}
        op = ops.StartSweep(
            name=name, experiment=experiment, spec_yaml=spec_yaml, spec_hash=spec_hash, search_space=space
        )
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
        op = ops.StartTrial(
            trial_id=trial_id, params=ops.params_of(params), tags=ops.tags_of(tags), run_name=run_name
        )
        self._wait_applied(self._enqueue(op), wait_s)
        return self.run_id(trial_id)

    def log_epoch(self, trial_id: str, metrics: dict[str, Any], step: int) -> bool:
        """Queue every numeric metric at `step`. A step <= the trial's last one is skipped (returns False):
        a resumed trial re-reports epochs after its checkpoint, and nothing may count twice."""
        step = int(step)
        last = self.last_step(trial_id)
        if last is not None and step <= last:
            return False
        self._enqueue(ops.LogEpoch(trial_id=trial_id, step=step, metrics=ops.numeric_metrics(metrics)))
        return True

    def set_tags(self, trial_id: str, tags: dict[str, Any]) -> None:
        self._enqueue(ops.SetTags(trial_id=trial_id, tags=ops.tags_of(tags)))

    def log_artifacts(self, trial_id: str, local_dir: Path | str, artifact_path: str | None = None) -> None:
        """Upload a folder into the trial's run (when the worker gets there: keep the folder until then)."""
        self._enqueue(ops.LogArtifacts(trial_id=trial_id, local_dir=str(local_dir), path=artifact_path))

    def end_trial(self, trial_id: str, fate: str, message: str | None = None) -> None:
        """Close the trial's run: fate completed / stopped -> FINISHED, error -> FAILED, interrupted -> KILLED."""
        if fate not in ops.FATES:
            raise ValueError(f"fate must be one of {ops.FATES}, got {fate!r}")
        self._enqueue(ops.EndTrial(trial_id=trial_id, fate=fate, message=message))

    def end_sweep(self, status: str = "FINISHED") -> None:
        """Close the parent run with `status` (FINISHED, FAILED or KILLED)."""
        if status not in ops.STATUS_FATE:
            raise ValueError(f"status must be one of {tuple(ops.STATUS_FATE)}, got {status!r}")
        self._enqueue(ops.EndSweep(status=status))

    def mark_interrupted(self) -> None:
        """Every RUNNING run of this sweep (trials and parent) -> KILLED with fate interrupted."""
        self._enqueue(ops.Interrupt())

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
            return trial_id in self._intent["trials"]

    def fate(self, trial_id: str) -> str | None:
        """The fate the driver gave the trial (None: never started, or running)."""
        with self._cond:
            return self._intent["trials"].get(trial_id, {}).get("fate")

    def last_step(self, trial_id: str) -> int | None:
        """The newest step the driver queued for the trial."""
        with self._cond:
            return self._intent["trials"].get(trial_id, {}).get("last_step")

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

    @property
    def closed(self) -> bool:
        return self._closed

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
                self._apply_with_retry(op)
            except _Abandoned:
                return
            with self._cond:
                self._queue.popleft()
                self._state["done_seq"] = seq
                try:
                    atomic_write_json(self.state_path, self._state)
                    if not self._queue:
                        self.outbox.clear()
                except OSError as exc:  # the next save records it; a replay is idempotent meanwhile
                    log.warning("tracking: could not save %s: %s", self.state_path, exc)
                self._cond.notify_all()

    def _apply_with_retry(self, op: Operation) -> None:
        attempt = 0
        while True:
            try:
                self._writer.apply(op)
                return
            except Exception as exc:
                if is_permanent(exc):
                    log.warning(
                        "tracking: dropped %s for %s: %s", op.op, getattr(op, "trial_id", "sweep"), exc
                    )
                    return
                delay = min(0.5 * 2**attempt, self.max_backoff_s)
                first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
                log.warning(
                    "tracking: %s failed (%s: %s); retry %d in %.1f s",
                    op.op,
                    type(exc).__name__,
                    first_line,
                    attempt + 1,
                    delay,
                )
                if self._abandon.wait(delay):
                    raise _Abandoned from exc
                attempt += 1


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
