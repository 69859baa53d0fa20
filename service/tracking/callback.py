"""The Ray Tune callback that drives a SweepTracker from trial events (it runs in the driver).

The driver is the single MLflow writer (SQLite fails with concurrent writers; docs/stack.md): trials only
train and report to Ray Tune, and this callback turns their events into the tracker's operations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from service import timeline
from service.tracking.tracker import SweepTracker, shared_tracker
from sweeps.asha_state import STATE_FILE as ASHA_STATE_FILE
from sweeps.asha_state import read_decisions
from trainers.files import flatten
from trainers.logs import log

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


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _config_epochs(config: dict[str, Any]) -> int | None:
    """`train.epochs` of a nested or flattened trial config, if there."""
    value = config.get("train", {}).get("epochs") if isinstance(config.get("train"), dict) else None
    return _as_int(value if value is not None else config.get("train.epochs"))


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
        self._tagged: set[str] = set()

    # ---- pickling: arguments only ----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tracker"] = None  # threads, locks and clients do not pickle; the state file is the truth
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tracker = None
        self._tagged = set(state.get("_tagged", ()))  # absent in callbacks pickled by an older frost

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None or self._tracker.closed:
            self._tracker = shared_tracker(
                self.state_path,
                self.tracking_uri,
                artifact_root=self.artifact_root,
                max_backoff_s=self.max_backoff_s,
            )
        return self._tracker

    # ---- Tune hooks ------------------------------------------------------------------------------------

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        timeline.mark("Tune set up; tracking starts (its writer thread opens MLflow's store)")
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
        step = _as_int(result.get("epoch", result.get("training_iteration")))
        if step is None:
            return
        metrics = {k: v for k, v in result.items() if k not in _TUNE_RESULT_KEYS}
        if self.tracker.log_epoch(trial.trial_id, metrics, step=step) and trial.trial_id not in self._tagged:
            self._tag_measures(trial.trial_id, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)
        last = self._last_epoch(trial)
        planned = self._planned_epochs(trial.config)
        if last is None:  # e.g. a pending trial removed when the sweep was stopped
            fate, detail = "stopped", "ended before reporting an epoch"
        elif planned is not None and last < planned:
            fate, detail = "stopped", f"stopped at epoch {last} of {planned} by the scheduler or a stop rule"
            # The scheduler saved its decision before Tune calls this (sweeps/asha.py): the run says why.
            decision = read_decisions(self.state_path.parent / ASHA_STATE_FILE).get(trial.trial_id)
            if decision is not None:
                detail = decision.describe()
                self.tracker.set_tags(trial.trial_id, decision.tags())
        else:
            fate, detail = "completed", f"ran {last} epochs"
        if self.log_final_checkpoint:
            self._log_checkpoint(trial)
        self._log_trial_artifacts(trial)
        self.tracker.end_trial(trial.trial_id, fate, detail)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_started(trial)
        self._log_trial_artifacts(trial)
        self.tracker.end_trial(trial.trial_id, "error", _trial_error_message(trial))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Nothing by default: checkpoints stay in Tune's storage; see `log_final_checkpoint`."""

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Tune calls this when the sweep finishes and when it is interrupted (SIGINT, stop). A trial
        without a fate did not finish: its run and the parent become KILLED, reopened on resume."""
        tracker = self.tracker
        unfinished = [t.trial_id for t in trials if tracker.fate(t.trial_id) is None]
        timeline.mark("last trial ended; tracking drains")
        if unfinished:
            tracker.mark_interrupted()
        else:
            tracker.end_sweep("FINISHED")
        closed = tracker.close(self.flush_timeout_s)
        timeline.mark("tracking drained")
        if not closed:
            log.warning(
                "tracking: %d MLflow operations still pending; they are kept in %s and sent when the sweep "
                "is next opened",
                tracker.pending(),
                tracker.outbox.path,
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
        epoch = _as_int((trial.last_result or {}).get("epoch"))
        return epoch if epoch is not None else self.tracker.last_step(trial.trial_id)

    def _planned_epochs(self, config: dict[str, Any]) -> int | None:
        if self.max_epochs is None:
            return _config_epochs(config)
        if callable(self.max_epochs):
            return int(self.max_epochs(config))
        return int(self.max_epochs)

    def _tag_measures(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """Once per trial: the resolved device, the trainable share (the report groups by them) and whether the
        feature cache served, as tags."""
        tags = {}
        if isinstance(metrics.get("device"), str):
            tags["frost.device"] = metrics["device"]
        if isinstance(metrics.get("trainable_share"), (int, float)):
            tags["frost.trainable_share"] = f"{float(metrics['trainable_share']):.4f}"
        if "cache_used" in metrics:
            tags["frost.cache_used"] = str(bool(metrics["cache_used"])).lower()
        if tags:
            self.tracker.set_tags(trial_id, tags)
            self._tagged.add(trial_id)

    def _log_trial_artifacts(self, trial: Any) -> None:
        """per_class_ap.csv, trial.yaml, curves.png, predictions.png into the trial's run, through the outbox
        (service/tracking/artifacts.py). Never fails the sweep: a trial without them is still a trial."""
        from service.tracking.artifacts import stage_trial_artifacts

        sweep_dir = self.state_path.parent
        staging = sweep_dir / "mlflow-staging" / "trial-artifacts" / trial.trial_id
        try:
            checkpoint = getattr(trial, "checkpoint", None)
            local = None
            if checkpoint is not None and getattr(checkpoint.filesystem, "type_name", "local") == "local":
                local = Path(checkpoint.path)
            if stage_trial_artifacts(sweep_dir / "trials" / trial.trial_id, staging, local):
                self.tracker.log_artifacts(trial.trial_id, staging)
        except Exception as exc:  # drawing or copying must not stop the sweep's bookkeeping
            log.warning(
                "tracking: no artifacts for trial %s (%s: %s)", trial.trial_id, type(exc).__name__, exc
            )

    def _log_checkpoint(self, trial: Any) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None:
            return
        if getattr(checkpoint.filesystem, "type_name", "local") == "local":
            local = checkpoint.path
        else:  # remote storage: copy next to the state file, kept until the worker has uploaded it
            local = checkpoint.to_directory(str(self.state_path.parent / "mlflow-staging" / trial.trial_id))
        self.tracker.log_artifacts(trial.trial_id, local, "checkpoint")
