"""SweepSpec: one YAML file describes a whole sweep, validated once, with every problem reported at once.

A sweep is a base trial (a full TrialSpec, defaults apply) plus a search: dotted paths into the trial
(`backbone.freeze`, `heads.box_convs`, `optim.lr`) mapped to samplers, each a one-key mapping:

    {grid: [a, b]}          every value, in every sample (tune.grid_search)
    {choice: [a, b]}        one value drawn per sample (tune.choice)
    {uniform: [lo, hi]}     float in [lo, hi] (tune.uniform)
    {loguniform: [lo, hi]}  float in [lo, hi], log scale, lo > 0 (tune.loguniform)
    {randint: [lo, hi]}     integer in [lo, hi) - hi is EXCLUSIVE, as in Ray Tune (tune.randint)
    {quniform: [lo, hi, q]} float in [lo, hi] rounded to a multiple of q (tune.quniform)

`samples` is Tune's num_samples: the grid is repeated `samples` times, random samplers are drawn anew each
time. Validation goes beyond types: every search path must name a leaf field of the trial, and every grid or
choice value and every range endpoint is checked by building the trial with it; the scheduler is checked
against the trial (epochs, evaluation cadence) and the metrics the trainer reports.

This module imports neither Ray nor MLflow, so `frost validate` and `frost schema` stay fast; the Ray Tune
translation lives in sweeps/space.py.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from trainers.config import (
    TrialSpec,
    apply_overrides,
    format_validation_error,
    parse_override,
    read_yaml,
)
from trainers.errors import FrostError
from trainers.reporting import EVAL_METRICS, REPORTED_METRICS

_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
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
# Schemes pyarrow (Ray Tune's storage layer) resolves from a URI; anything else is taken for a typo.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
# randint ranges up to this size are enumerated when other checks need every possible value.
_ENUMERATE_LIMIT = 1000

Problem = tuple[tuple[str, ...], str]  # (location relative to the validated field, message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- samplers


class GridSampler(_Strict):
    """Every value, in every sample: `{grid: [a, b]}` → tune.grid_search."""

    kind: ClassVar[str] = "grid"
    grid: list[Any] = Field(min_length=1)

    @field_validator("grid")
    @classmethod
    def _no_duplicates(cls, values: list[Any]) -> list[Any]:
        # A repeated grid value silently runs the same trial twice; `samples` is the way to repeat.
        seen: set[str] = set()
        for value in values:
            key = json.dumps(value, sort_keys=True, default=str)
            if key in seen:
                raise ValueError(f"duplicate value {value!r} (use `samples` to repeat trials)")
            seen.add(key)
        return values

    def values(self) -> list[Any]:
        return list(self.grid)

    def possible_values(self) -> list[Any]:
        return self.values()


class ChoiceSampler(_Strict):
    """One value drawn per sample: `{choice: [a, b]}` → tune.choice."""

    kind: ClassVar[str] = "choice"
    choice: list[Any] = Field(min_length=1)

    def values(self) -> list[Any]:
        return list(self.choice)

    def possible_values(self) -> list[Any]:
        return self.values()


def _bounds_shape(kind: str, data: Any, size: int) -> Any:
    """A clear message for the commonest mistake: the wrong number of bounds."""
    if isinstance(data, dict) and kind in data:
        bounds = data[kind]
        form = "[lo, hi]" if size == 2 else "[lo, hi, q]"
        if not isinstance(bounds, (list, tuple)) or len(bounds) != size:
            raise PydanticCustomError("sampler_bounds", f"{kind} expects {form}, got {bounds!r}")
    return data


class _RangeSampler(_Strict):
    size: ClassVar[int] = 2

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        return _bounds_shape(cls.kind, data, cls.size)  # type: ignore[attr-defined]

    @property
    def bounds(self) -> tuple[Any, ...]:
        return getattr(self, self.kind)  # type: ignore[attr-defined]

    @property
    def lo(self) -> Any:
        return self.bounds[0]

    @property
    def hi(self) -> Any:
        return self.bounds[1]

    def _check_order(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"lo must be < hi, got {list(self.bounds)}")

    def possible_values(self) -> list[Any]:
        """The extremes: enough for checks such as `max_epochs <= every possible train.epochs`."""
        return [self.lo, self.hi]

    def probe_values(self) -> list[Any]:
        """Values validated against the trial field: both ends and a fractional interior point, so a
        float sampler on an integer field is caught before the sweep starts."""
        return [self.lo, self.lo + (self.hi - self.lo) * 0.37, self.hi]


class UniformSampler(_RangeSampler):
    """A float in [lo, hi]: `{uniform: [lo, hi]}` → tune.uniform."""

    kind: ClassVar[str] = "uniform"
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> UniformSampler:
        self._check_order()
        return self


class LogUniformSampler(_RangeSampler):
    """A float in [lo, hi] on a log scale, lo > 0: `{loguniform: [lo, hi]}` → tune.loguniform."""

    kind: ClassVar[str] = "loguniform"
    loguniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> LogUniformSampler:
        if self.lo <= 0:
            raise ValueError(f"lo must be > 0 on a log scale, got {self.lo}")
        self._check_order()
        return self

    def probe_values(self) -> list[Any]:
        return [self.lo, math.sqrt(self.lo * self.hi) * 1.0137, self.hi]


class RandIntSampler(_RangeSampler):
    """An integer in [lo, hi) - hi EXCLUSIVE, as in Ray Tune: `{randint: [lo, hi]}` → tune.randint."""

    kind: ClassVar[str] = "randint"
    randint: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self) -> RandIntSampler:
        if not self.lo < self.hi:
            raise ValueError(f"lo must be < hi (hi is exclusive), got {list(self.bounds)}")
        return self

    def possible_values(self) -> list[Any]:
        if self.hi - self.lo <= _ENUMERATE_LIMIT:
            return list(range(self.lo, self.hi))
        return [self.lo, self.hi - 1]

    def probe_values(self) -> list[Any]:
        return [self.lo, self.hi - 1]


class QUniformSampler(_RangeSampler):
    """A float in [lo, hi] rounded to a multiple of q: `{quniform: [lo, hi, q]}` → tune.quniform."""

    kind: ClassVar[str] = "quniform"
    size: ClassVar[int] = 3
    quniform: tuple[float, float, float]

    @model_validator(mode="after")
    def _ordered(self) -> QUniformSampler:
        if self.q <= 0:
            raise ValueError(f"q must be > 0, got {self.q}")
        self._check_order()
        return self

    @property
    def q(self) -> float:
        return self.quniform[2]

    def _quantize(self, value: float) -> float:
        return round(value / self.q) * self.q

    def possible_values(self) -> list[Any]:
        return [self._quantize(self.lo), self._quantize(self.hi)]

    def probe_values(self) -> list[Any]:
        return [self._quantize(v) for v in (self.lo, (self.lo + self.hi) / 2, self.hi)]


SAMPLERS: dict[str, type[_Strict]] = {
    cls.kind: cls  # type: ignore[attr-defined]
    for cls in (
        GridSampler,
        ChoiceSampler,
        UniformSampler,
        LogUniformSampler,
        RandIntSampler,
        QUniformSampler,
    )
}


def _sampler_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return getattr(value, "kind", None)
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return None


# The annotation gives the JSON Schema its shape; parsing goes through parse_search (all errors at once).
Sampler = Annotated[
    Annotated[GridSampler, Tag("grid")]
    | Annotated[ChoiceSampler, Tag("choice")]
    | Annotated[UniformSampler, Tag("uniform")]
    | Annotated[LogUniformSampler, Tag("loguniform")]
    | Annotated[RandIntSampler, Tag("randint")]
    | Annotated[QUniformSampler, Tag("quniform")],
    Discriminator(_sampler_kind),
]


# ------------------------------------------------------------------------------------- trial paths


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def trial_field_paths(model: type[BaseModel] = TrialSpec, prefix: str = "") -> list[str]:
    """Every leaf field of the trial spec as a dotted path (what `search` keys may name)."""
    paths = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            paths.extend(trial_field_paths(field.annotation, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _path_problem(path: str) -> str | None:
    """Why `path` cannot be searched (None if it names a leaf field of TrialSpec)."""
    parts = path.split(".")
    model: type[BaseModel] = TrialSpec
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            close = difflib.get_close_matches(path, trial_field_paths(), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"no such field in the trial spec{hint}"
        is_last = i == len(parts) - 1
        if _is_section(field.annotation):
            if is_last:
                examples = ", ".join(trial_field_paths(field.annotation, f"{path}.")[:3])
                return (
                    f"is a section of the trial spec, not a field; search one of its fields ({examples}, ...)"
                )
            model = field.annotation
        elif not is_last:
            return f"no such field in the trial spec ({'.'.join(parts[: i + 1])} is a field, not a section)"
    return None


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set a dotted path (as parts) in raw trial data, creating sections on the way."""
    for key in parts[:-1]:
        data = data.setdefault(key, {})
    data[parts[-1]] = value


def get_path(data: dict[str, Any], parts: list[str]) -> Any:
    """Read a dotted path (as parts) from raw trial data."""
    for key in parts:
        data = data[key]
    return data


def _trial_value(trial: TrialSpec, path: str) -> Any:
    return get_path(trial.model_dump(mode="json"), path.split("."))


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def _check_value(base: dict[str, Any], path: str, value: Any) -> tuple[Any, str | None]:
    """Build the trial with `value` at `path`: (the value as the trial normalises it, None) or (None, why)."""
    parts = path.split(".")
    data = copy.deepcopy(base)
    set_path(data, parts, value)
    try:
        trial = TrialSpec.model_validate(data)
    except ValidationError as exc:
        reasons = []
        for item in exc.errors():
            loc = [str(p) for p in item["loc"]]
            message = item["msg"].removeprefix("Value error, ")
            if loc[: len(parts)] != parts:  # a cross-field rule elsewhere in the trial tripped
                message = f"trial.{'.'.join(loc)}: {message}" if loc else message
            elif len(loc) > len(parts):
                message = f"{'.'.join(loc[len(parts) :])}: {message}"
            reasons.append(message)
        return None, "; ".join(reasons)
    return get_path(trial.model_dump(mode="json"), parts), None


def _parse_sampler(raw: Any) -> tuple[Any, list[Problem]]:
    kinds = ", ".join(SAMPLERS)
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        return None, [
            ((), f"expected a sampler mapping with one key ({kinds}), got a {kind}: e.g. {{grid: [..]}}")
        ]
    if len(raw) != 1 or next(iter(raw)) not in SAMPLERS:
        keys = ", ".join(map(str, raw)) or "nothing"
        return None, [((), f"a sampler is a mapping with exactly one key of {kinds}; got {keys}")]
    kind = next(iter(raw))
    try:
        return SAMPLERS[kind].model_validate(raw), []
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            loc = tuple(str(p) for p in item["loc"]) or (kind,)
            problems.append((loc, item["msg"].removeprefix("Value error, ")))
        return None, problems


def _check_sampler_values(sampler: Any, base: dict[str, Any], path: str) -> tuple[Any, list[Problem]]:
    """Validate the sampler's values against the trial field; grid/choice values come back normalised
    (e.g. `{partial: 2}` → `partial:2`, 1 → 1.0 on a float field) so Tune sees what the trial will use."""
    if isinstance(sampler, (GridSampler, ChoiceSampler)):
        normalised, problems = [], []
        for value in sampler.values():
            checked, why = _check_value(base, path, value)
            if why:
                problems.append(((), f"{sampler.kind} value {_describe(value)} is invalid: {why}"))
            normalised.append(checked)
        if problems:
            return None, problems
        return type(sampler).model_validate({sampler.kind: normalised}), []
    problems = []
    for value in sampler.probe_values():
        _, why = _check_value(base, path, value)
        if why:
            problems.append(
                ((), f"{sampler.kind} {list(sampler.bounds)} draws {_describe(value)}, invalid: {why}")
            )
    return (None, problems) if problems else (sampler, [])


def parse_search(raw: dict[Any, Any], trial: TrialSpec | None) -> tuple[dict[str, Any], list[Problem]]:
    """Parse every search entry, collecting every problem (path, sampler shape, values vs the trial).
    Without a valid base trial the values cannot be checked (the trial's own errors are reported)."""
    base = trial.model_dump(mode="json") if trial is not None else None
    samplers: dict[str, Any] = {}
    problems: list[Problem] = []
    for path, entry in raw.items():
        if not isinstance(path, str) or not path:
            problems.append(((str(path),), "search keys are dotted field paths of the trial, e.g. optim.lr"))
            continue
        entry_problems = []
        why = _path_problem(path)
        if why:
            entry_problems.append(((path,), why))
        sampler, sampler_problems = _parse_sampler(entry)
        entry_problems += [((path, *loc), msg) for loc, msg in sampler_problems]
        if sampler is not None and base is not None and not why:
            sampler, value_problems = _check_sampler_values(sampler, base, path)
            entry_problems += [((path, *loc), msg) for loc, msg in value_problems]
        problems += entry_problems
        if not entry_problems:
            samplers[path] = sampler
    return samplers, problems


def _possible_values(trial: TrialSpec, search: dict[str, Any], path: str) -> list[Any]:
    if path in search:
        return search[path].possible_values()
    return [_trial_value(trial, path)]


# ------------------------------------------------------------------------------------------- sections


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
    """What each trial reserves on the cluster (tune.with_resources)."""

    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0, description="fractions (e.g. 0.5) let trials share a GPU")
    memory_gb: float | None = Field(None, gt=0, description="reserved memory; None reserves none")

    _whole_above_one = field_validator("cpus", "gpus")(_check_resource_amount)


class TrackingSpec(_Strict):
    uri: str | None = Field(
        None, min_length=1, description="MLflow tracking URI; None: SQLite under the project folder"
    )
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment; None: the sweep name")


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
    search: dict[str, Sampler] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="dotted trial field path → sampler: {grid|choice: [..]}, {uniform|loguniform: [lo, hi]}, "
        "{randint: [lo, hi]} (hi exclusive), {quniform: [lo, hi, q]}",
    )
    samples: int = Field(
        1, ge=1, description="Tune num_samples: repeats of the grid / draws of random samplers"
    )
    scheduler: SchedulerSpec = Field(  # type: ignore[valid-type]
        default_factory=lambda: FifoSpec(type="fifo"), validate_default=True
    )
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

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG_RE.match(value):
            raise ValueError(
                "must be a slug of at most 64 characters: lowercase letters, digits, '-' and '_', "
                f"starting with a letter or digit; got {value!r}"
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
        problems: list[Problem] = []
        if scheduler.metric not in SCHEDULER_METRICS:
            problems.append(
                (
                    ("metric",),
                    f"{scheduler.metric!r} is not a metric the trainer reports; one of {', '.join(SCHEDULER_METRICS)}",
                )
            )
        direction = METRIC_DIRECTIONS.get(scheduler.metric)
        if direction and direction != scheduler.mode:
            problems.append(
                (
                    ("mode",),
                    f"{scheduler.mode!r} would favour the worst trials: {scheduler.metric} wants mode: {direction}",
                )
            )
        trial, search = info.data.get("trial"), _known_search(info, ("train.epochs", "eval.every"))
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
        trial, search = info.data.get("trial"), _known_search(info, ("train.device",))
        if trial is not None and search is not None and resources.gpus == 0:
            if "cuda" in _possible_values(trial, search, "train.device"):
                raise _problems_error(
                    [
                        (
                            ("gpus",),
                            "trial.train.device 'cuda' needs gpus > 0: Ray hides GPUs from trials that "
                            "do not reserve one (or use device 'auto')",
                        )
                    ]
                )
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
        return list(self.search)

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: tracking.experiment, or the sweep name."""
        return self.tracking.experiment or self.name

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
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_asha(asha: AshaSpec, trial: TrialSpec, search: dict[str, Any]) -> tuple[AshaSpec, list[Problem]]:
    """ASHA against the trial: max_epochs within every possible train.epochs, and every epoch at which
    ASHA decides carries the metric (Ray's ASHA silently skips a report without it - see stack-notes)."""
    problems: list[Problem] = []
    epoch_values = [int(e) for e in _possible_values(trial, search, "train.epochs")]
    searched = "train.epochs" in search
    source = "searched train.epochs" if searched else "trial.train.epochs"
    if asha.max_epochs is None:
        asha = asha.model_copy(update={"max_epochs": min(epoch_values)})
        if asha.grace_period > asha.max_epochs:  # type: ignore[operator]
            problems.append(
                (
                    ("grace_period",),
                    f"grace_period {asha.grace_period} exceeds max_epochs {asha.max_epochs} "
                    f"(defaulted to {'the smallest ' if searched else ''}{source})",
                )
            )
            return asha, problems
    too_short = sorted({e for e in epoch_values if e < asha.max_epochs})  # type: ignore[operator]
    if too_short:
        problems.append(
            (
                ("max_epochs",),
                f"max_epochs {asha.max_epochs} exceeds {source} "
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
                f"{asha.reduction_factor:g} and max_epochs {asha.max_epochs} leave rungs for at most {count}",
            )
        )
    if asha.metric in EVAL_METRICS:
        problems += _eval_cadence_problems(asha, trial, search, epoch_values)
    return asha, problems


def _evaluated(epoch: int, every: int, epochs: int) -> bool:
    """The trainer's rule (EvalSpec.every): evaluate every N epochs (1-based) and always after the last."""
    return epoch % every == 0 or epoch == epochs


def _epochs_phrase(epochs: list[int]) -> str:
    return f"epoch {epochs[0]} is" if len(epochs) == 1 else f"epochs {', '.join(map(str, epochs))} are"


def _eval_cadence_problems(
    asha: AshaSpec, trial: TrialSpec, search: dict[str, Any], epoch_values: list[int]
) -> list[Problem]:
    """Our rule: eval.every may exceed 1 under ASHA only if every rung and max_epochs fall on evaluated
    epochs. Otherwise ASHA would compare trials at a later epoch than it says, or (at max_epochs) let
    trials run past max_t - silently. eval.every: 1 always satisfies it."""
    decisions = sorted(set(asha.rungs()) | {asha.max_epochs})  # type: ignore[arg-type]
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


# -------------------------------------------------------------------------------- loading and diffs


def format_sweep_error(error: ValidationError) -> str:
    """One line per problem, each naming its dotted field path (`trial.backbone.freeze: ...`)."""
    details = []
    for item in error.errors():
        loc = tuple(item["loc"])
        if len(loc) > 1 and loc[0] == "scheduler" and loc[1] in ("asha", "fifo"):
            # pydantic puts the union tag in the path; users wrote scheduler.grace_period
            loc = (loc[0], *loc[2:])
        message = item["msg"]
        if item["type"] == "union_tag_not_found" and loc == ("scheduler",):
            message = "needs a type: asha (early stopping) or fifo (every trial runs to the end)"
        error_type = PydanticCustomError(item["type"], message)
        details.append(InitErrorDetails(type=error_type, loc=loc, input=item["input"]))
    return format_validation_error(ValidationError.from_exception_data(error.title, details))


def apply_sweep_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Dotted `--set` overrides. Search keys hold dots themselves, so `search.<field path>=<sampler>`
    replaces that entry (`--set 'search.neck.fpn_channels={grid: [64]}'`), `search.<field
    path>.<kind>=<values>` sets it to that sampler (`--set search.neck.fpn_channels.grid=[64]`) and
    `search.<field path>=null` drops it. Everything else is an ordinary dotted path."""
    plain = []
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "search" or len(keys) < 2:
            plain.append(text)
            continue
        if data.get("search") is None:
            data["search"] = {}
        if not isinstance(data["search"], dict):
            raise FrostError(f"--set {text!r}: search is not a mapping")
        if len(keys) > 2 and keys[-1] in SAMPLERS:
            keys, value = keys[:-1], {keys[-1]: value}
        path = ".".join(keys[1:])
        if value is None:
            data["search"].pop(path, None)
        else:
            data["search"][path] = value
    return apply_overrides(data, plain)


def load_sweep_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """YAML file + dotted `--set` overrides → validated SweepSpec, or FrostError listing every problem."""
    data = apply_sweep_overrides(read_yaml(path), overrides or [])
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise FrostError(f"{path} is invalid:\n{format_sweep_error(exc)}") from None


def dump_sweep_spec(spec: SweepSpec, path: str | Path) -> None:
    """Write the validated spec (defaults and derived values filled in) as YAML that load_sweep_spec
    reads back to an equal spec: what the driver keeps next to a sweep to detect a changed spec."""
    Path(path).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def spec_diff(a: SweepSpec, b: SweepSpec) -> list[str]:
    """What changed from `a` to `b`, one line per leaf: `trial.train.epochs: 4 -> 6`."""
    old, new = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))

    def show(key: str, side: dict[str, Any]) -> str:
        return json.dumps(side[key]) if key in side else "(unset)"

    keys = list(old) + [k for k in new if k not in old]
    return [f"{k}: {show(k, old)} -> {show(k, new)}" for k in keys if old.get(k, ...) != new.get(k, ...)]
