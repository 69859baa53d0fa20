"""Sweep specs in and out of files: YAML + `--set` overrides → SweepSpec (or one FrostError naming every
problem), the validated spec back to YAML, and the diff between two specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from sweeps.model import SweepSpec
from sweeps.samplers import SAMPLERS
from trainers.config import apply_overrides, format_validation_error, parse_override
from trainers.errors import FrostError, shown
from trainers.files import atomic_write_text
from trainers.safe_yaml import read_yaml


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
            raise FrostError(f"--set {shown(text)}: search is not a mapping")
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
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_text(Path(path), text)  # a torn spec file would make the sweep unrecognisable


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
