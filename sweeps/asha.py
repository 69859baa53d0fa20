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
- **Replicates.** With `replicates_by` (e.g. `seed`), trials that differ only in those paths are replicates of
  one configuration, and the configuration is ASHA's unit: a rung holds one record per configuration (the mean
  of its replicates there), a configuration is judged once per rung (when its first replicate arrives, against
  the other configurations), and its replicates continue or stop together (docs/scheduling.md).
- **Decisions.** Every stop is recorded (stratum, rung, the configuration's rung value and the cutoff it
  missed, computed by Ray's `_Bracket.cutoff`) and readable with `sweeps.asha_state.read_decisions`.

The value compared at a rung is `rung_metric`: the epoch's own metric (`last`, Ray's behaviour), the best so far
(`best`) or an exponential moving average (`ema`). Trials report each epoch once per history entry (results a
resumed trial reports again overwrite the same epoch), so the rung value is a function of the epochs alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
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
    _nan_to_none,
    _none_to_nan,
    decision_from_json,
    decision_to_json,
)
from sweeps.replicates import configuration_id, finite_mean
from trainers.errors import FrostError, shown
from trainers.files import atomic_write_json, read_json


def _stratum_label(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


class PersistentASHA(AsyncHyperBandScheduler):
    """AsyncHyperBandScheduler with strata, replicates, a rung metric, recorded stops and its state in a JSON
    file.

    `state_path` None keeps everything in memory (a scheduler for tests or a single uninterrupted run).
    `replicates_by` empty: every trial is its own configuration, Ray's behaviour."""

    def __init__(
        self,
        state_path: str | Path | None = None,
        *,
        stratify_by: str | None = None,
        replicates_by: Sequence[str] = (),
        rung_metric: str = "last",
        grace_period: int = 1,
        brackets: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(grace_period=grace_period, brackets=brackets, **kwargs)
        if rung_metric not in ("last", "best", "ema"):
            raise ValueError(f"rung_metric must be last, best or ema, got {shown(rung_metric)}")
        self._grace_period = grace_period
        self._bracket_count = brackets
        self._stratify_by = stratify_by
        self._replicates_by = tuple(replicates_by)
        self._rung_metric = rung_metric
        self._state_path = None if state_path is None else str(state_path)
        self._strata: dict[str, list[_Bracket]] = {}
        self._placement: dict[str, tuple[str, int]] = {}  # running trial → (stratum, bracket index)
        self._configurations: dict[str, tuple[str, int]] = {}  # configuration → (stratum, bracket index)
        self._configuration_of: dict[str, str] = {}  # trial → configuration
        # configuration → rung milestone → replicate trial → its rung value there: the rung record's mean
        self._members: dict[str, dict[float, dict[str, float]]] = {}
        self._history: dict[str, dict[int, float]] = {}  # trial → epoch → metric, as reported
        self._decisions: dict[str, Decision] = {}  # configuration → its stop
        self._loaded = self._state_path is None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Whatever copy Tune unpickles on restore, the file beside the sweep is the newest state.
        self.__dict__.update(state)
        self._loaded = self._state_path is None

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
                raise FrostError(
                    f"scheduler.stratify_by: trial config {shown(config)} has no {self._stratify_by}"
                )
            node = node[key]
        return _stratum_label(node)

    def choose_bracket(self, trial: Any) -> tuple[str, int]:
        """(stratum, bracket index) for a new configuration: Ray's rule (a softmax over the brackets' rung
        counts), applied to the brackets of the trial's own stratum. Replicates join their configuration's."""
        stratum = self.stratum_of(trial.config)
        brackets = self._brackets_of(stratum)
        sizes = np.array([len(b._rungs) for b in brackets])
        probs = np.e ** (sizes - sizes.max())
        return stratum, int(np.random.choice(len(brackets), p=probs / probs.sum()))

    def configuration_of(self, trial: Any) -> str:
        """The trial's configuration: its config without the replicate paths; without any, the trial itself."""
        cid = self._configuration_of.get(trial.trial_id)
        if cid is None:
            cid = (
                configuration_id(trial.config, self._replicates_by) if self._replicates_by else trial.trial_id
            )
            self._configuration_of[trial.trial_id] = cid
        return cid

    def _brackets_of(self, stratum: str) -> list[_Bracket]:
        if stratum not in self._strata:
            self._strata[stratum] = [
                _Bracket(
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
            cid = self.configuration_of(trial)
            if cid not in self._configurations:
                self._configurations[cid] = self.choose_bracket(trial)
            self._placement[trial.trial_id] = self._configurations[cid]
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
        cid = self.configuration_of(trial)
        self._place(trial)
        decided = self._decisions.get(cid)
        if decided is not None:
            action = self._follow(trial, cid, decided, result)
            self._persist()
            return action
        action = TrialScheduler.CONTINUE
        if self._time_attr in result and self._metric in result:
            epoch = int(result[self._time_attr])
            self._history.setdefault(trial.trial_id, {})[epoch] = float(result[self._metric])
            if epoch >= self._max_t and self._stop_last_trials:
                action = TrialScheduler.STOP  # ran its course
            else:
                action, decision = self._judge(trial, epoch)
                if decision is not None:
                    self._decisions[cid] = decision
            if action == TrialScheduler.STOP:
                self._num_stopped += 1
        self._persist()
        return action

    def _follow(self, trial: Any, cid: str, decided: Decision, result: dict) -> str:
        """A trial of a stopped configuration runs up to the epoch its configuration was stopped at, then stops:
        a replicate behind the one judged (or not started when it was) ends with the same epochs, adding its
        rung values to the configuration's records on the way. The judged trial itself, resumed after a driver
        restart that Tune's lagging snapshot missed, replays its epochs untouched (already recorded) and stops
        again with the decision first made."""
        raw = result.get(self._time_attr)
        epoch = int(raw) if isinstance(raw, (int, float)) else None
        if epoch is not None and epoch <= decided.epoch and trial.trial_id not in decided.trials:
            if self._metric in result:
                self._history.setdefault(trial.trial_id, {})[epoch] = float(result[self._metric])
                self._judge(trial, epoch, up_to=decided.rung)  # the configuration was judged at that rung
        if epoch is not None and epoch < decided.epoch:
            return TrialScheduler.CONTINUE
        if trial.trial_id not in decided.trials:
            self._decisions[cid] = replace(decided, trials=(*decided.trials, trial.trial_id))
            self._num_stopped += 1
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._ensure_loaded()
        # a stopped configuration's later epochs must not enter the rungs
        decided = self.configuration_of(trial) in self._decisions
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

    def _rung_reached(self, bracket: _Bracket, trial_id: str, cid: str, epoch: int) -> Any:
        """The rung milestone this result of the trial records at, or None: Ray's `_Bracket.on_result` walk
        (the highest milestone at or below `epoch` the trial has not reached yet), per replicate."""
        members = self._members.get(cid, {})
        for milestone, _ in bracket._rungs:
            reached = trial_id in members.get(milestone, {})
            if epoch >= milestone and reached and not self._stop_last_trials:
                return None
            if epoch < milestone or reached:
                continue
            return milestone
        return None

    def _judge(self, trial: Any, epoch: int, up_to: int | None = None) -> tuple[str, Decision | None]:
        """Record the trial's rung value at the rung this epoch reaches, and judge its configuration there if
        it is the first of its replicates to arrive: Ray's cutoff (`_Bracket.cutoff`) over the OTHER
        configurations recorded at the rung, compared with the mean of the replicates there. A stop comes with
        its Decision. `up_to`: record only at rungs up to that epoch (a stopped configuration's replicates)."""
        cid = self.configuration_of(trial)
        stratum, index = self._configurations[cid]
        bracket = self._brackets_of(stratum)[index]
        milestone = self._rung_reached(bracket, trial.trial_id, cid, epoch)
        if milestone is None or (up_to is not None and math.ceil(milestone) > up_to):
            return TrialScheduler.CONTINUE, None
        recorded = next(r for m, r in bracket._rungs if m == milestone)
        members = self._members.setdefault(cid, {}).setdefault(milestone, {})
        members[trial.trial_id] = self.rung_value(trial.trial_id, epoch)
        mean = finite_mean(members.values())
        judged = cid in recorded  # once per configuration and rung: later replicates only move its mean
        computed = None if judged else bracket.cutoff(recorded)
        cutoff = None if computed is None else float(cast(float, computed))
        recorded[cid] = self._sign * mean
        if cutoff is None or not self._sign * mean < cutoff:
            return TrialScheduler.CONTINUE, None
        return TrialScheduler.STOP, Decision(
            trial_id=trial.trial_id,
            stratum=stratum,
            rung=math.ceil(milestone),
            epoch=epoch,
            metric=str(self._metric),
            rung_metric=self._rung_metric,
            value=mean,
            cutoff=self._sign * cutoff,
            configuration=cid,
            replicates_by=self._replicates_by,
            replicates=dict(members),
            trials=(trial.trial_id,),
        )

    def decisions(self) -> dict[str, Decision]:
        """Every stopped trial's decision (its configuration's), by trial id."""
        self._ensure_loaded()
        return {t: d for d in self._decisions.values() for t in d.trials}

    def rung_records(self, stratum: str = UNSTRATIFIED, bracket: int = 0) -> dict[int, dict[str, float]]:
        """Rung epoch → configuration → its record there (the mean of its replicates), in the metric's units."""
        return {
            math.ceil(m): {c: self._sign * v for c, v in recorded.items()}
            for m, recorded in self._brackets_of(stratum)[bracket]._rungs
        }

    # ---- persistence ----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the decisions depend on, as JSON data (rung records in the order they were made)."""
        return {
            "format": STATE_FORMAT,
            "metric": self._metric,
            "mode": self._mode,
            "stratify_by": self._stratify_by,
            "replicates_by": list(self._replicates_by),
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
            "configurations": {c: list(place) for c, place in self._configurations.items()},
            "configuration_of": dict(self._configuration_of),
            "replicates": {
                c: [[m, [[t, _nan_to_none(v)] for t, v in members.items()]] for m, members in rungs.items()]
                for c, rungs in self._members.items()
            },
            "history": {
                t: {str(e): _nan_to_none(v) for e, v in sorted(h.items())} for t, h in self._history.items()
            },
            "decisions": {c: decision_to_json(d) for c, d in self._decisions.items()},
        }

    def load_state(self, state: Any, source: str = "state") -> None:
        """Replace the in-memory state by `state` (as `state()` returns it); FrostError if it is not one of
        this scheduler's: another format (an older frost's included), another metric or rung layout, or
        malformed."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else None
            written = f" (its format is {shown(found)})" if isinstance(found, str) else ""
            raise FrostError(f"{source}: not a frost ASHA state ({STATE_FORMAT} JSON){written}; {_REFUSED}")
        mine = (self._metric, self._mode, self._stratify_by, list(self._replicates_by), self._rung_metric)
        theirs = (
            state.get("metric"),
            state.get("mode"),
            state.get("stratify_by"),
            state.get("replicates_by"),
            state.get("rung_metric"),
        )
        if mine != theirs:
            raise FrostError(
                f"{source}: ASHA state of another scheduler (metric, mode, strata, replicates: {theirs})"
            )
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
            raise FrostError(f"{source}: malformed ASHA state ({type(exc).__name__}: {exc})") from None

    def _restore(self, state: dict[str, Any]) -> None:
        self._strata = {}
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
        self._configurations = {str(c): (str(s), int(i)) for c, (s, i) in state["configurations"].items()}
        self._configuration_of = {str(t): str(c) for t, c in state["configuration_of"].items()}
        milestones = {m for brackets in self._strata.values() for b in brackets for m, _ in b._rungs}
        self._members = {
            str(c): {
                # the bracket's own milestone object, so records and members share keys
                next(m for m in milestones if m == saved): {str(t): _none_to_nan(v) for t, v in pairs}
                for saved, pairs in rungs
            }
            for c, rungs in state["replicates"].items()
        }
        self._history = {
            str(t): {int(e): _none_to_nan(v) for e, v in h.items()} for t, h in state["history"].items()
        }
        self._decisions = {str(c): decision_from_json(d) for c, d in state["decisions"].items()}
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
