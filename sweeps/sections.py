"""The sections of a sweep spec beside the trial and the search: scheduler (ASHA or FIFO), resources, tracking,
and the checks of ASHA against the trial (epochs, evaluation cadence, strata)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import Field, field_validator

from sweeps.samplers import ChoiceSampler, GridSampler, _Strict
from sweeps.search import Problem, _possible_values, is_joint, key_paths, searched_paths
from trainers.config import TrialSpec
from trainers.errors import shown
from trainers.reporting import EVAL_METRICS, REPORTED_METRICS

# Metrics a scheduler may rank by: everything the trainer reports except the time attribute itself.
SCHEDULER_METRICS = tuple(m for m in REPORTED_METRICS if m != "epoch")
# Which way is better, for the metrics where only one way makes sense (a wrong mode keeps the worst trials).
METRIC_DIRECTIONS = {
    **{m: "max" for m in EVAL_METRICS},
    "images_per_s": "max",
    "loss": "min",
    "step_time_s": "min",
    "epoch_time_s": "min",
    "peak_memory_mb": "min",
}
# The value ASHA compares at a rung (docs/scheduling.md): the epoch's own, the best so far, or a moving average.
RUNG_METRICS = ("last", "best", "ema")


class AshaSpec(_Strict):
    """Asynchronous successive halving: at each rung (grace_period × reduction_factor^k epochs) a trial
    whose metric is below the top 1/reduction_factor of those that reached the rung is stopped."""

    type: Literal["asha"]
    metric: str = Field("AP", description="a metric the trainer reports (trainers/reporting.py)")
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="epochs before any trial can be stopped")
    reduction_factor: float = Field(2, gt=1, description="keep the top 1/reduction_factor at each rung")
    max_epochs: int | None = Field(
        None,
        ge=1,
        description="ASHA's max_t in epochs; default: trial.train.epochs (the smallest if searched)",
    )
    brackets: int = Field(1, ge=1)
    stratify_by: str | None = Field(
        None,
        description="a searched grid/choice path (e.g. backbone.freeze): separate brackets and rungs per value, "
        "so trials compete only within their stratum",
    )
    rung_metric: Literal["last", "best", "ema"] = Field(
        "last",
        description="the value compared at a rung: this epoch's metric, the best so far, or its moving average",
    )
    replicates_by: list[str] | None = Field(
        None,
        description="searched trial paths whose values are replicates of one configuration, not configurations "
        "(e.g. [seed]): ASHA judges a configuration once per rung on the mean of its replicates, and its "
        "replicates continue or stop together. Default (None): [seed] when seed is searched, else []",
    )

    def rung_count(self, bracket: int = 0) -> int:
        """Rungs in one bracket, computed as Ray's _Bracket does (numpy, same rounding)."""
        max_t = self.max_epochs or self.grace_period
        ratio = np.log(max_t / self.grace_period) / np.log(self.reduction_factor)
        return int(ratio - bracket + 1)

    def rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials, over all brackets, on a validated spec (max_epochs
        filled in). A fractional milestone is decided at the first epoch past it."""
        epochs = set()
        for s in range(self.brackets):
            epochs |= {
                math.ceil(self.grace_period * self.reduction_factor ** (k + s))
                for k in range(self.rung_count(s))
            }
        return sorted(epochs)


class FifoSpec(_Strict):
    """No early stopping: every trial runs all its epochs. metric/mode only rank the results."""

    type: Literal["fifo"]
    metric: str = Field("AP", description="ranks results (best trial); a metric the trainer reports")
    mode: Literal["max", "min"] = "max"
    replicates_by: list[str] | None = Field(
        None, description="accepted for a spec that switches scheduler.type; FIFO has nothing to judge"
    )


SchedulerSpec = Annotated[
    AshaSpec | FifoSpec,
    Field(discriminator="type"),
]


def _check_resource_amount(value: float) -> float:
    # Ray accepts fractions of one unit (GPU sharing) but amounts above 1 must be whole.
    if value > 1 and value != int(value):
        raise ValueError(f"amounts above 1 must be whole numbers, got {value:g}")
    return value


class ResourcesSpec(_Strict):
    """What each trial reserves on the cluster: one process (tune.with_resources), or with
    `workers_per_trial` > 1 that many data-parallel workers (Ray Train), each reserving `cpus` / `gpus`."""

    cpus: float = Field(1, gt=0, description="per trial; per worker when workers_per_trial > 1")
    gpus: float = Field(
        0, ge=0, description="fractions (e.g. 0.5) let one-worker trials share a GPU; per worker as cpus"
    )
    memory_gb: float | None = Field(None, gt=0, description="reserved memory; None reserves none")
    workers_per_trial: int = Field(
        1,
        ge=1,
        le=1024,
        description="data-parallel workers of one trial (DDP on Ray Train; train.batch_size is global)",
    )
    placement: Literal["pack", "spread"] = Field(
        "pack",
        description="workers of a data-parallel trial: packed on few nodes, or spread one per node where "
        "possible (no effect with one worker)",
    )

    _whole_above_one = field_validator("cpus", "gpus")(_check_resource_amount)


class TrackingSpec(_Strict):
    uri: str | None = Field(
        None, min_length=1, description="MLflow tracking URI; None: SQLite under the project folder"
    )
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; None: the sweep name")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # The URI is saved in frost-sweep.yaml and tracking.json and shown in logs: a password in it would
        # land in all of them. The value is not echoed (it holds the secret).
        if value is not None and "://" in value:
            try:
                parts = urlsplit(value)
                credentials = parts.username is not None or parts.password is not None
            except ValueError:
                credentials = "@" in value.split("://", 1)[1].split("/", 1)[0]
            if credentials:
                raise ValueError(
                    "carries credentials (user:password@); give the bare URI and pass them as "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                    "environment, so they land in no saved file"
                )
        return value


def metric_problems(scheduler: AshaSpec | FifoSpec) -> list[Problem]:
    """The scheduler's metric is one the trainer reports, ranked in the direction that makes sense for it."""
    problems: list[Problem] = []
    if scheduler.metric not in SCHEDULER_METRICS:
        problems.append(
            (
                ("metric",),
                f"{shown(scheduler.metric)} is not a metric the trainer reports; one of {', '.join(SCHEDULER_METRICS)}",
            )
        )
    direction = METRIC_DIRECTIONS.get(scheduler.metric)
    if direction and direction != scheduler.mode:
        problems.append(
            (
                ("mode",),
                f"{shown(scheduler.mode)} would favour the worst trials: {scheduler.metric} wants mode: {direction}",
            )
        )
    return problems


def _check_asha(asha: AshaSpec, trial: TrialSpec, search: dict[str, Any]) -> tuple[AshaSpec, list[Problem]]:
    """ASHA against the trial: max_epochs within every possible train.epochs, and every epoch at which
    ASHA decides carries the metric (Ray's ASHA silently skips a report without it: docs/scheduling.md)."""
    problems: list[Problem] = []
    epoch_values = [int(e) for e in _possible_values(trial, search, "train.epochs")]
    searched = "train.epochs" in search
    source = "searched train.epochs" if searched else "trial.train.epochs"
    if asha.max_epochs is None:
        asha = asha.model_copy(update={"max_epochs": min(epoch_values)})
        if asha.grace_period > min(epoch_values):
            problems.append(
                (
                    ("grace_period",),
                    f"grace_period {asha.grace_period} exceeds max_epochs {asha.max_epochs} "
                    f"(defaulted to {'the smallest ' if searched else ''}{source})",
                )
            )
            return asha, problems
    max_epochs = asha.max_epochs or min(epoch_values)
    too_short = sorted({e for e in epoch_values if e < max_epochs})
    if too_short:
        problems.append(
            (
                ("max_epochs",),
                f"max_epochs {max_epochs} exceeds {source} "
                f"({', '.join(map(str, too_short))}); ASHA's last rung would never be reached",
            )
        )
        return asha, problems
    count = asha.rung_count()
    if asha.brackets > count:
        problems.append(
            (
                ("brackets",),
                f"{asha.brackets} brackets but grace_period {asha.grace_period}, reduction_factor "
                f"{asha.reduction_factor:g} and max_epochs {max_epochs} leave rungs for at most {count}",
            )
        )
    if asha.metric in EVAL_METRICS:
        problems += _eval_cadence_problems(asha, max_epochs, trial, search, epoch_values)
    return asha, problems


def strata_problems(asha: AshaSpec, search: dict[str, Any]) -> list[Problem]:
    """`stratify_by` must name a search path with a finite set of values (grid or choice): one stratum each."""
    path = asha.stratify_by
    if path is None:
        return []
    sampler = search.get(path)
    if sampler is None:
        joint = [key for key in search if is_joint(key) and path in key_paths(key)]
        if joint:  # searched, but drawn together with other paths: a stratum would hold several of them
            return [
                (
                    ("stratify_by",),
                    f"{shown(path)} is searched only jointly, in the key {shown(joint[0])}; strata need a path "
                    "searched on a key of its own",
                )
            ]
        searched = ", ".join(searched_paths(search)) or "nothing"
        return [
            (
                ("stratify_by",),
                f"{shown(path)} is not searched (searched: {searched}); strata need a searched path",
            )
        ]
    if not isinstance(sampler, (GridSampler, ChoiceSampler)):
        return [
            (
                ("stratify_by",),
                f"search.{path} is a {sampler.kind} sampler; strata need a grid or choice (a finite set of values)",
            )
        ]
    return []


# The replicate path searched by default: a trial's seed is a replicate of its configuration.
DEFAULT_REPLICATE_PATH = "seed"


def default_replicates(search: dict[str, Any], stratify_by: str | None = None) -> list[str]:
    """What `replicates_by` means when the spec leaves it out: [seed] when seed is searched on a key of its own
    (and is not the stratum), else []."""
    return (
        [DEFAULT_REPLICATE_PATH]
        if DEFAULT_REPLICATE_PATH in search and stratify_by != DEFAULT_REPLICATE_PATH
        else []
    )


def replicates_problems(paths: list[str], search: dict[str, Any], stratify_by: str | None) -> list[Problem]:
    """Each replicate path is searched, is not the stratum (a stratum's trials could not be replicates of
    each other's configuration), and does not share a joint key with a configuration path (one draw would set
    both, so replicates would differ in configuration)."""
    problems: list[Problem] = []
    searched = searched_paths(search)
    for path in paths:
        if path not in searched:
            problems.append(
                (
                    ("replicates_by",),
                    f"{shown(path)} is not searched (searched: {', '.join(searched) or 'nothing'}); replicates "
                    "are values of a searched path",
                )
            )
        elif path == stratify_by:
            problems.append(
                (
                    ("replicates_by",),
                    f"{shown(path)} is scheduler.stratify_by: a stratum holds one value of it, so its trials "
                    "cannot be replicates of one configuration",
                )
            )
    for key in search:
        if not is_joint(key):
            continue
        inside = [p for p in key_paths(key) if p in paths]
        others = [p for p in key_paths(key) if p not in paths]
        if inside and others:
            problems.append(
                (
                    ("replicates_by",),
                    f"{', '.join(inside)} shares the joint search key {shown(key)} with {', '.join(others)}, "
                    "which is not a replicate path: its replicates would differ in configuration; search "
                    "it on its own key",
                )
            )
    return problems


def _evaluated(epoch: int, every: int, epochs: int) -> bool:
    """The trainer's rule (EvalSpec.every): evaluate every N epochs (1-based) and always after the last."""
    return epoch % every == 0 or epoch == epochs


def _epochs_phrase(epochs: list[int]) -> str:
    return f"epoch {epochs[0]} is" if len(epochs) == 1 else f"epochs {', '.join(map(str, epochs))} are"


def _eval_cadence_problems(
    asha: AshaSpec, max_epochs: int, trial: TrialSpec, search: dict[str, Any], epoch_values: list[int]
) -> list[Problem]:
    """Our rule: eval.every may exceed 1 under ASHA only if every rung and max_epochs fall on evaluated
    epochs. Otherwise ASHA would compare trials at a later epoch than it says, or (at max_epochs) let
    trials run past max_t - silently. eval.every: 1 always satisfies it."""
    decisions = sorted(set(asha.rungs()) | {max_epochs})
    for every in sorted({int(v) for v in _possible_values(trial, search, "eval.every")}):
        for epochs in sorted(set(epoch_values)):
            missing = [e for e in decisions if not _evaluated(e, every, epochs)]
            if missing:
                return [
                    (
                        (),
                        f"ASHA decides at epochs {', '.join(map(str, decisions))} from {asha.metric}, but "
                        f"with trial.eval.every={every} (train.epochs={epochs}) "
                        f"{_epochs_phrase(missing)} not evaluated, so no {asha.metric} is reported there; "
                        "set trial.eval.every: 1 or align grace_period / reduction_factor / max_epochs "
                        "with it",
                    )
                ]
    return []
