"""ASHA for frost sweeps: rungs that survive a driver restart, kept per stratum, every stop on the record.

Three things Ray Tune 2.60's `AsyncHyperBandScheduler` does not do (docs/scheduling.md says why each matters):

- **Persistence.** Tune pickles the scheduler once, when the sweep starts, and `Tuner.restore` brings back that
  empty copy (ray-project/ray#30838): a resumed sweep would promote and stop different trials than an
  uninterrupted one. This scheduler writes its state beside the sweep after every event, atomically, as JSON
  (a pickle in shared storage would run the code of whoever can write there), and reloads it the first time it
  is used after a restore. A file that is not such a state is refused with a FrostError, never executed.
- **Strata.** With `stratify_by` (a searched path, e.g. `backbone.freeze`) every value of that path gets
  brackets and rungs of its own, so trials compete only with trials of the same value. The bracket choice is
  `choose_bracket`, a hook of this class (Ray's `on_trial_add` picks from one shared set of brackets).
- **Decisions.** Every stop is recorded (stratum, rung, the trial's rung value and the cutoff it missed, the
  cutoff being the very value Ray's `_Bracket` compared) and readable with `read_decisions`.

The value compared at a rung is `rung_metric`: the epoch's own metric (`last`, Ray's behaviour), the best so far
(`best`) or an exponential moving average (`ema`). Trials report each epoch once per history entry (results a
resumed trial reports again overwrite the same epoch), so the rung value is a function of the epochs alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from sweeps.asha_state import (
    _REFUSED,
    EMA_WEIGHT,
    STATE_FORMAT,
    UNSTRATIFIED,
    Decision,
    _decision,
    _none_to_nan,
    json_state_path,
)
from sweeps.asha_state import STATE_FILE as STATE_FILE  # re-exported: callers read the state's names here too
from sweeps.asha_state import read_decisions as read_decisions
from trainers.errors import FrostError
from trainers.files import atomic_write_json, read_json


class _RecordingBracket(_Bracket):
    """Ray's bracket, remembering the cutoff it computed last: the value a stop was decided against."""

    last_cutoff: float | None = None

    def cutoff(self, recorded: dict[str, float]) -> Any:
        value = super().cutoff(recorded)
        self.last_cutoff = None if value is None else float(cast(float, value))
        return value


def _stratum_label(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value


class PersistentASHA(AsyncHyperBandScheduler):
    """AsyncHyperBandScheduler with strata, a rung metric, recorded stops and its state in a JSON file.

    `state_path` None keeps everything in memory (a scheduler for tests or a single uninterrupted run)."""

    def __init__(
        self,
        state_path: str | Path | None = None,
        *,
        stratify_by: str | None = None,
        rung_metric: str = "last",
        grace_period: int = 1,
        brackets: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(grace_period=grace_period, brackets=brackets, **kwargs)
        if rung_metric not in ("last", "best", "ema"):
            raise ValueError(f"rung_metric must be last, best or ema, got {rung_metric!r}")
        self._grace_period = grace_period
        self._bracket_count = brackets
        self._stratify_by = stratify_by
        self._rung_metric = rung_metric
        self._state_path = None if state_path is None else str(json_state_path(state_path))
        self._strata: dict[str, list[_RecordingBracket]] = {}
        self._placement: dict[str, tuple[str, int]] = {}  # trial → (stratum, bracket index)
        self._history: dict[str, dict[int, float]] = {}  # trial → epoch → metric, as reported
        self._decisions: dict[str, Decision] = {}
        self._loaded = self._state_path is None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Whatever copy Tune unpickles on restore, the file beside the sweep is the newest state.
        self.__dict__.update(state)
        if "_strata" not in state:
            self._upgrade_legacy()
        self._loaded = self._state_path is None

    def _upgrade_legacy(self) -> None:
        """A scheduler pickled (in Tune's experiment state) by frost before strata: one pool, rung metric
        `last`, and its rungs start afresh (they were kept in a pickle, which is not read)."""
        self._grace_period = int(min(m for m, _ in self._brackets[0]._rungs))
        self._bracket_count = len(self._brackets)
        self._stratify_by, self._rung_metric = None, "last"
        self._state_path = None if self._state_path is None else str(json_state_path(self._state_path))
        self._strata, self._placement, self._history, self._decisions = {}, {}, {}, {}

    # ---- the hook: which stratum and bracket a trial joins ----------------------------------------------

    def stratum_of(self, config: dict[str, Any]) -> str:
        """The trial's stratum: its value of `stratify_by` (a flat Tune config key, or a nested path)."""
        if self._stratify_by is None:
            return UNSTRATIFIED
        if self._stratify_by in config:
            return _stratum_label(config[self._stratify_by])
        node: Any = config
        for key in self._stratify_by.split("."):
            if not isinstance(node, dict) or key not in node:
                raise FrostError(f"scheduler.stratify_by: trial config {config!r} has no {self._stratify_by}")
            node = node[key]
        return _stratum_label(node)

    def choose_bracket(self, trial: Any) -> tuple[str, int]:
        """(stratum, bracket index) for a new trial: Ray's rule (a softmax over the brackets' rung counts),
        applied to the brackets of the trial's own stratum."""
        stratum = self.stratum_of(trial.config)
        brackets = self._brackets_of(stratum)
        sizes = np.array([len(b._rungs) for b in brackets])
        probs = np.e ** (sizes - sizes.max())
        return stratum, int(np.random.choice(len(brackets), p=probs / probs.sum()))

    def _brackets_of(self, stratum: str) -> list[_RecordingBracket]:
        if stratum not in self._strata:
            self._strata[stratum] = [
                _RecordingBracket(
                    self._grace_period,
                    self._max_t,
                    self._reduction_factor,
                    s,
                    stop_last_trials=self._stop_last_trials,
                )
                for s in range(self._bracket_count)
            ]
        return self._strata[stratum]

    def _place(self, trial: Any) -> tuple[str, int]:
        if trial.trial_id not in self._placement:  # a restored trial keeps the bracket it had
            self._placement[trial.trial_id] = self.choose_bracket(trial)
        return self._placement[trial.trial_id]

    # ---- Tune's scheduler interface ---------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._metric or not self._metric_op:
            raise ValueError(f"{type(self).__name__} needs a metric and a mode")
        self._ensure_loaded()
        self._place(trial)
        self._persist()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._ensure_loaded()
        decided = self._decisions.get(trial.trial_id)
        if decided is not None:
            # Stopped before a driver restart that Tune's lagging experiment snapshot missed: Tune resumed it
            # from its checkpoint, and it stays stopped with the decision first made (docs/scheduling.md). The
            # epochs it replays up to that decision go through untouched (already in the rungs), so it ends
            # with exactly the epochs it had when it was stopped.
            epoch = result.get(self._time_attr)
            if isinstance(epoch, (int, float)) and epoch < decided.epoch:
                return TrialScheduler.CONTINUE
            return TrialScheduler.STOP
        self._place(trial)
        action = TrialScheduler.CONTINUE
        if self._time_attr in result and self._metric in result:
            epoch = int(result[self._time_attr])
            self._history.setdefault(trial.trial_id, {})[epoch] = float(result[self._metric])
            if epoch >= self._max_t and self._stop_last_trials:
                action = TrialScheduler.STOP  # ran its course
            else:
                action, decision = self._judge(trial, epoch)
                if decision is not None:
                    self._decisions[trial.trial_id] = decision
            if action == TrialScheduler.STOP:
                self._num_stopped += 1
        self._persist()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._ensure_loaded()
        decided = trial.trial_id in self._decisions  # a stopped trial's later epochs must not enter the rungs
        if (
            not decided
            and trial.trial_id in self._placement
            and self._time_attr in result
            and self._metric in result
        ):
            epoch = int(result[self._time_attr])
            self._history.setdefault(trial.trial_id, {})[epoch] = float(result[self._metric])
            # Ray records a final result at a rung the trial had not reached yet; a trial ending is no stop.
            self._judge(trial, epoch)
        self._placement.pop(trial.trial_id, None)
        self._persist()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._ensure_loaded()
        self._placement.pop(trial.trial_id, None)
        self._persist()

    def debug_string(self) -> str:
        lines = [f"Using frost ASHA: num_stopped={self._num_stopped}"]
        for stratum, brackets in self._strata.items():
            lines += [f"{stratum}: {b.debug_str()}" for b in brackets]
        return "\n".join(lines)

    # ---- rungs --------------------------------------------------------------------------------------------

    @property
    def _sign(self) -> float:
        """+1 for mode max, -1 for min: Ray's brackets keep the larger values."""
        if self._metric_op is None:
            raise ValueError(f"{type(self).__name__} needs a mode")
        return float(self._metric_op)

    def rung_value(self, trial_id: str, epoch: int) -> float:
        """The value ASHA compares for this trial at `epoch`, in the metric's own units."""
        history = sorted((e, v) for e, v in self._history.get(trial_id, {}).items() if e <= epoch)
        values = [v for _, v in history]
        if not values:
            return math.nan
        if self._rung_metric == "best":
            finite = [v for v in values if v == v]
            return max(finite, key=lambda v: self._sign * v) if finite else math.nan
        if self._rung_metric == "ema":
            average = values[0]
            for value in values[1:]:
                average = EMA_WEIGHT * value + (1 - EMA_WEIGHT) * average
            return average
        return values[-1]

    def _judge(self, trial: Any, epoch: int) -> tuple[str, Decision | None]:
        """Ray's bracket decides (and records the trial at the rung it reached); a stop comes with its
        Decision, holding the cutoff the bracket compared."""
        stratum, index = self._placement[trial.trial_id]
        bracket = self._brackets_of(stratum)[index]
        value = self.rung_value(trial.trial_id, epoch)
        before = {milestone: trial.trial_id in recorded for milestone, recorded in bracket._rungs}
        bracket.last_cutoff = None
        action = bracket.on_result(trial, epoch, self._sign * value)
        if action != TrialScheduler.STOP or bracket.last_cutoff is None:
            return action, None
        rung = next(m for m, recorded in bracket._rungs if trial.trial_id in recorded and not before[m])
        return action, Decision(
            trial_id=trial.trial_id,
            stratum=stratum,
            rung=math.ceil(rung),
            epoch=epoch,
            metric=str(self._metric),
            rung_metric=self._rung_metric,
            value=value,
            cutoff=self._sign * bracket.last_cutoff,
        )

    def decisions(self) -> dict[str, Decision]:
        self._ensure_loaded()
        return dict(self._decisions)

    # ---- persistence ----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the decisions depend on, as JSON data (rung records in the order they were made)."""
        return {
            "format": STATE_FORMAT,
            "metric": self._metric,
            "mode": self._mode,
            "stratify_by": self._stratify_by,
            "rung_metric": self._rung_metric,
            "num_stopped": self._num_stopped,
            "strata": {
                stratum: [
                    [[m, [[t, _nan_to_none(v)] for t, v in recorded.items()]] for m, recorded in b._rungs]
                    for b in brackets
                ]
                for stratum, brackets in self._strata.items()
            },
            "trials": {t: list(place) for t, place in self._placement.items()},
            "history": {
                t: {str(e): _nan_to_none(v) for e, v in sorted(h.items())} for t, h in self._history.items()
            },
            "decisions": {
                t: {k: _nan_to_none(v) if isinstance(v, float) else v for k, v in asdict(d).items()}
                for t, d in self._decisions.items()
            },
        }

    def load_state(self, state: Any, source: str = "state") -> None:
        """Replace the in-memory state by `state` (as `state()` returns it); FrostError if it is not one of
        this scheduler's: another format, another metric or rung layout, or malformed."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise FrostError(f"{source}: not a frost ASHA state ({STATE_FORMAT} JSON); {_REFUSED}")
        mine = (self._metric, self._mode, self._stratify_by, self._rung_metric)
        theirs = (state.get("metric"), state.get("mode"), state.get("stratify_by"), state.get("rung_metric"))
        if mine != theirs:
            raise FrostError(f"{source}: ASHA state of another scheduler (metric, mode, strata: {theirs})")
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FrostError(f"{source}: malformed ASHA state ({type(exc).__name__}: {exc})") from None

    def _restore(self, state: dict[str, Any]) -> None:
        strata: dict[str, list[_RecordingBracket]] = {}
        self._strata = strata
        for stratum, brackets in state["strata"].items():
            fresh = self._brackets_of(stratum)
            if len(brackets) != len(fresh):
                raise ValueError(f"stratum {stratum}: {len(brackets)} brackets, expected {len(fresh)}")
            for bracket, saved in zip(fresh, brackets):
                if [m for m, _ in saved] != [m for m, _ in bracket._rungs]:
                    raise ValueError(
                        f"stratum {stratum}: rungs {[m for m, _ in saved]} differ from the spec's"
                    )
                for (_, recorded), (_, pairs) in zip(bracket._rungs, saved):
                    recorded.update({str(t): _none_to_nan(v) for t, v in pairs})
        self._placement = {str(t): (str(s), int(i)) for t, (s, i) in state["trials"].items()}
        self._history = {
            str(t): {int(e): _none_to_nan(v) for e, v in h.items()} for t, h in state["history"].items()
        }
        self._decisions = {str(t): _decision(d) for t, d in state["decisions"].items()}
        self._num_stopped = int(state["num_stopped"])

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        assert self._state_path is not None
        if Path(self._state_path).exists():
            try:
                state = read_json(Path(self._state_path), "ASHA state")
            except FrostError as exc:
                raise FrostError(f"{exc}; {_REFUSED}") from None
            self.load_state(state, self._state_path)

    def _persist(self) -> None:
        if self._state_path is not None:
            atomic_write_json(Path(self._state_path), self.state())
