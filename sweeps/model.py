"""SweepSpec: the whole sweep as one validated model, every problem reported at once (see sweeps/spec.py)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from sweeps.samplers import GridSampler, Sampler, _Strict
from sweeps.search import Problem, _possible_values, parse_search, searched_paths
from sweeps.sections import (
    AshaSpec,
    FifoSpec,
    ResourcesSpec,
    SchedulerSpec,
    TrackingSpec,
    _check_asha,
    default_replicates,
    metric_problems,
    replicates_problems,
    strata_problems,
)
from trainers.config import TrialSpec
from trainers.errors import FrostError, shown

# More trials than this in one sweep is refused without --allow-large (SweepSpec.check_size).
MAX_TRIALS = 10_000
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: "$" would let a trailing newline in
# Schemes pyarrow (Ray Tune's storage layer) resolves from a URI; anything else is taken for a typo.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")

_PARTIAL_SEARCH = "__partial_search__"


def _known_search(info: ValidationInfo, needs: tuple[str, ...]) -> dict[str, Any] | None:
    """The validated search, or - when some entries failed - the entries that parsed, provided none of
    the paths a check `needs` failed (else None: that check cannot be done this run)."""
    if "search" in info.data:
        return info.data["search"]
    samplers, failed = info.data.get(_PARTIAL_SEARCH, (None, set()))
    if samplers is None or failed & set(needs):
        return None
    return samplers


def _problems_error(problems: list[Problem], title: str = "SweepSpec") -> ValidationError:
    details = [
        InitErrorDetails(type=PydanticCustomError("sweep_spec", message), loc=loc, input=None)
        for loc, message in problems
    ]
    return ValidationError.from_exception_data(title, details)


# ----------------------------------------------------------------------------------------- the spec


class SweepSpec(_Strict):
    """A whole sweep: a base trial, what to search, how to schedule, where to run and record it."""

    name: str = Field(description="the sweep's identity: lowercase letters, digits, '-' and '_'")
    description: str | None = None
    trial: TrialSpec = Field(default_factory=TrialSpec, description="the base trial; defaults apply")
    search: dict[str, Sampler] = Field(
        default_factory=dict,
        description="dotted trial field path → sampler: {grid|choice: [..]}, {uniform|loguniform: [lo, hi]}, "
        "{randint: [lo, hi]} (hi exclusive), {quniform: [lo, hi, q]}; comma-joined paths are set together "
        "by a grid|choice of lists (`neck.fpn_channels,heads.box_convs: {grid: [[32, 1], [128, 4]]}`)",
    )
    samples: int = Field(
        1, ge=1, description="Tune num_samples: repeats of the grid / draws of random samplers"
    )
    scheduler: SchedulerSpec = Field(default_factory=lambda: FifoSpec(type="fifo"), validate_default=True)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, validate_default=True)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=-1, description="retries of a failed trial (-1: forever)")
    storage: str | None = Field(
        None,
        min_length=1,
        description="Ray Tune storage: a local path or s3://, gs://, ... URI; None: project folder",
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    checkpoint_artifacts: bool = Field(False, description="log each trial's final checkpoint to MLflow")
    reuse_actors: bool = Field(
        True,
        description="a finished or stopped trial's Ray actor (its process) runs the next pending trial, so "
        "only the first trial of each pays the imports; false: a fresh process per trial. Data-parallel "
        "trials (resources.workers_per_trial > 1) always get a fresh actor",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG_RE.match(value):
            raise ValueError(
                "must be a slug of at most 64 characters: lowercase letters, digits, '-' and '_', "
                f"starting with a letter or digit; got {shown(value)}"
            )
        return value

    @field_validator("search", mode="wrap")
    @classmethod
    def _search(cls, value: Any, handler: Any, info: ValidationInfo) -> dict[str, Any]:
        if not isinstance(value, dict):
            return handler(value)  # pydantic's own "should be a valid dictionary"
        samplers, problems = parse_search(value, info.data.get("trial"))
        if problems:
            # Leave the entries that did parse for the scheduler/resources checks that follow, so one run
            # lists their problems too (pydantic drops a failed field from info.data).
            failed = {str(path) for path in value} - set(samplers)
            info.data[_PARTIAL_SEARCH] = (samplers, failed)
            raise _problems_error(problems)
        return samplers

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, scheduler: AshaSpec | FifoSpec, info: ValidationInfo) -> AshaSpec | FifoSpec:
        problems = metric_problems(scheduler)
        trial, search = info.data.get("trial"), _known_search(info, ("train.epochs", "eval.every"))
        if isinstance(scheduler, AshaSpec) and scheduler.stratify_by is not None:
            strata_search = _known_search(info, (scheduler.stratify_by,))
            problems += strata_problems(scheduler, strata_search) if strata_search is not None else []
        if scheduler.replicates_by is not None or isinstance(scheduler, AshaSpec):
            replicate_search = _known_search(info, tuple(scheduler.replicates_by or ()))
            if replicate_search is not None:
                stratify_by = scheduler.stratify_by if isinstance(scheduler, AshaSpec) else None
                if scheduler.replicates_by is None:
                    # Resolved here so a saved spec says what ran; SweepSpec.digest leaves the default out, so a
                    # spec saved before replicates existed keeps its digest.
                    resolved = default_replicates(replicate_search, stratify_by)
                    scheduler = scheduler.model_copy(update={"replicates_by": resolved})
                problems += replicates_problems(scheduler.replicates_by or [], replicate_search, stratify_by)
        if isinstance(scheduler, AshaSpec):
            if scheduler.max_epochs is not None and scheduler.grace_period > scheduler.max_epochs:
                problems.append(
                    (
                        ("grace_period",),
                        f"grace_period {scheduler.grace_period} exceeds max_epochs {scheduler.max_epochs}",
                    )
                )
            elif trial is not None and search is not None:
                scheduler, asha_problems = _check_asha(scheduler, trial, search)
                problems += asha_problems
        if problems:
            raise _problems_error(problems)
        return scheduler

    @field_validator("resources")
    @classmethod
    def _resources(cls, resources: ResourcesSpec, info: ValidationInfo) -> ResourcesSpec:
        trial, search = info.data.get("trial"), _known_search(info, ("train.device", "train.batch_size"))
        if trial is None or search is None:
            return resources
        problems: list[Problem] = []
        if resources.gpus == 0 and "cuda" in _possible_values(trial, search, "train.device"):
            problems.append(
                (
                    ("gpus",),
                    "trial.train.device 'cuda' needs gpus > 0: Ray hides GPUs from trials that "
                    "do not reserve one (or use device 'auto')",
                )
            )
        workers = resources.workers_per_trial
        if workers > 1 and 0 < resources.gpus < 1:
            # NCCL refuses two ranks of one process group on one GPU: a data-parallel worker owns its GPUs.
            problems.append(
                (
                    ("gpus",),
                    f"{resources.gpus:g} per worker cannot be shared by data-parallel workers "
                    f"(workers_per_trial: {workers}); give each worker whole GPUs",
                )
            )
        smallest_batch = min(int(b) for b in _possible_values(trial, search, "train.batch_size"))
        if smallest_batch < workers:
            problems.append(
                (
                    ("workers_per_trial",),
                    f"{workers} workers cannot share a global batch of {smallest_batch} "
                    "(trial.train.batch_size is the global batch: at least one image per worker)",
                )
            )
        if problems:
            raise _problems_error(problems)
        return resources

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(
                    f"{scheme}:// is not a storage Ray Tune can write to; use a local path or one of "
                    + ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
                )
        return value

    # --- derived facts for the driver, tracker and report

    @property
    def searched_paths(self) -> list[str]:
        """Every trial path the search sets (a joint key's paths one by one)."""
        return searched_paths(self.search)

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: tracking.experiment, or the sweep name."""
        return self.tracking.experiment or self.name

    def check_size(self, allow_large: bool = False) -> None:
        """A sweep above MAX_TRIALS trials is almost surely a typo in a grid (or a grid of grids): refused
        unless asked for (`--allow-large`)."""
        if not allow_large and self.trial_count() > MAX_TRIALS:
            raise FrostError(
                f"search: {self.trial_count():,} trials (samples x grid sizes) is above the limit of {MAX_TRIALS:,}; "
                "shrink the grid, or pass --allow-large if you mean it"
            )

    def trial_count(self) -> int:
        """How many trials Tune will start: samples × the product of the grid sizes."""
        count = self.samples
        for sampler in self.search.values():
            if isinstance(sampler, GridSampler):
                count *= len(sampler.grid)
        return count

    def digest(self) -> str:
        """A stable hash of everything that changes what runs (the description is left out), for
        idempotent submission and for spotting a changed spec under the same name."""
        payload = self.model_dump(mode="json", exclude={"description"})
        replicates = payload["scheduler"].get("replicates_by")
        stratify_by = payload["scheduler"].get("stratify_by")
        if replicates is None or replicates == default_replicates(self.search, stratify_by):
            # The default, written out or resolved by validation, hashes as it did before the field existed:
            # a sweep saved then is not "changed" now.
            payload["scheduler"].pop("replicates_by", None)
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Searched paths that change how fast a trial learns early: ASHA comparing their values at one rung would
# decide by speed (docs/scheduling.md).
_SPEED_PATHS = ("backbone.freeze",)


def spec_warnings(spec: SweepSpec) -> list[str]:
    """Valid but likely unintended: one line each, for `frost validate` and `frost run` to print."""
    warnings = []
    scheduler = spec.scheduler
    if isinstance(scheduler, AshaSpec) and scheduler.stratify_by is None:
        for path in _SPEED_PATHS:
            if path in spec.search:
                warnings.append(
                    f"scheduler: ASHA searches {path} without stratify_by: its values share rungs, so the one "
                    f"that learns faster early stops the others; set scheduler.stratify_by: {path} "
                    "(docs/scheduling.md)"
                )
    return warnings


def check_repeats(spec: SweepSpec) -> None:
    """Refuse `samples > 1` when the repeats would be copies: no searched `seed` and no random sampler.

    Tune repeats the grid `samples` times with the same values, so without a searched seed each repeat is
    the same trial, and counting copies as a seed spread would call noise-free what was never measured.
    Refused rather than seeded behind the user's back: a searched `seed: {grid: [0, 1, 2]}` says it."""
    if spec.samples <= 1 or "seed" in spec.search:
        return
    if all(isinstance(sampler, GridSampler) for sampler in spec.search.values()):
        raise FrostError(
            f"samples: {spec.samples} repeats of the same grid without a searched seed are identical "
            f"trials; search the seed instead (search: seed: {{grid: {list(range(spec.samples))}}}, "
            "samples: 1)"
        )
