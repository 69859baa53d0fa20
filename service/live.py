"""The live view: one line per trial event on stderr while a sweep runs (frost's own, instead of Tune's table)."""

from __future__ import annotations

from typing import Any

from ray import tune

from service import timeline
from service.results import is_better, is_number
from trainers.logs import log


class LiveView(tune.Callback):
    """Trial, state, epoch, its metric now and its best so far; the searched values."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.best: dict[str, float] = {}

    def _line(self, trial: Any, state: str, result: dict[str, Any] | None = None) -> None:
        result = result or trial.last_result or {}
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if is_number(value) else ""
        best = self.best.get(trial.trial_id)
        best_shown = f" (best {best:.4f})" if best is not None else ""
        config = " ".join(f"{k}={v}" for k, v in trial.config.items())
        log.info(
            "[%s] %-9s epoch %3s %s%s  %s",
            trial.trial_id,
            state,
            result.get("epoch", 0),
            shown,
            best_shown,
            config,
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        timeline.mark(f"trial {trial.trial_id} started (its actor is up)")
        self._line(trial, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and is_number(value):
            if is_better(float(value), self.best.get(trial.trial_id), self.mode):
                self.best[trial.trial_id] = float(value)
        timeline.mark(f"trial {trial.trial_id} reported epoch {result.get('epoch', '?')}")
        self._line(trial, "running", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        timeline.mark(f"trial {trial.trial_id} complete")
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "error")
