"""ASHA whose rung records survive a driver restart.

Ray Tune 2.60 pickles the scheduler once, when the sweep starts, and `Tuner.restore` brings back that empty
copy (ray-project/ray#30838): a resumed sweep would promote and stop different trials than an uninterrupted
one. This scheduler writes its state (rungs, trial → bracket, counters; `AsyncHyperBandScheduler.save`'s
format) beside the sweep after every decision, atomically, and reloads it the first time it is used after a
restore. Results a resumed trial reports again hit rungs it is already recorded at, so they change nothing.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler

_OWN = ("_state_path", "_loaded")


class PersistentASHA(AsyncHyperBandScheduler):
    def __init__(self, state_path: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._loaded = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Whatever copy Tune unpickles on restore, the file beside the sweep is the newest state.
        self.__dict__.update(state)
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if os.path.exists(self._state_path):
            with open(self._state_path, "rb") as fh:
                saved = pickle.load(fh)
            self.__dict__.update({k: v for k, v in saved.items() if k not in _OWN})

    def _persist(self) -> None:
        tmp = f"{self._state_path}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump({k: v for k, v in self.__dict__.items() if k not in _OWN}, fh)
        os.replace(tmp, self._state_path)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._ensure_loaded()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps the bracket it had
            super().on_trial_add(tune_controller, trial)
        self._persist()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._ensure_loaded()
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        decision = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._ensure_loaded()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
        self._persist()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._ensure_loaded()
        self._trial_info.pop(trial.trial_id, None)
        self._persist()
