"""Samplers of a sweep's search: each a one-key mapping (`{grid: [a, b]}`, `{uniform: [lo, hi]}`, ...)
validated on its own; sweeps/search.py checks their values against the trial."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainers.errors import shown

# randint ranges up to this size are enumerated when other checks need every possible value.
_ENUMERATE_LIMIT = 1000


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
                raise ValueError(f"duplicate value {shown(value)} (use `samples` to repeat trials)")
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
            raise PydanticCustomError("sampler_bounds", f"{kind} expects {form}, got {shown(bounds)}")
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
    cls.kind: cls
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
