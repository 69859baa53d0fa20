"""A sweep's search, parsed: every path names a leaf field of the trial, every sampler is well formed, and every
grid/choice value and range endpoint builds a valid trial. Every problem is collected, none stops the others.

A key is one dotted path (`neck.fpn_channels: {grid: [32, 64]}`) or several joined by commas, set together
(`neck.fpn_channels,heads.box_convs: {grid: [[32, 1], [128, 4]]}`): a grid or choice of lists, one value per
path, so capacity can step several knobs at once instead of their product."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeps.samplers import SAMPLERS, ChoiceSampler, GridSampler
from trainers.config import TrialSpec
from trainers.errors import shown

Problem = tuple[tuple[str, ...], str]  # (location relative to the validated field, message)

JOINT_SEPARATOR = ","


def key_paths(key: str) -> list[str]:
    """The trial paths a search key sets: itself, or each of a joint key's comma-separated paths."""
    return [part.strip() for part in key.split(JOINT_SEPARATOR)]


def is_joint(key: str) -> bool:
    return JOINT_SEPARATOR in key


def searched_paths(keys: Any) -> list[str]:
    """Every trial path the search keys set, joint keys expanded, in spec order."""
    return [path for key in keys for path in key_paths(key)]


def set_searched(data: dict[str, Any], key: str, value: Any) -> None:
    """Apply one search key's value to raw trial data (a joint key's list sets its paths in order)."""
    if is_joint(key):
        for path, item in zip(key_paths(key), value, strict=True):
            set_path(data, path.split("."), item)
    else:
        set_path(data, key.split("."), value)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that is a section of the spec (a nested model), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def trial_field_paths(model: type[BaseModel] = TrialSpec, prefix: str = "") -> list[str]:
    """Every leaf field of the trial spec as a dotted path (what `search` keys may name)."""
    paths = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            paths.extend(trial_field_paths(section, f"{prefix}{name}."))
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
        section = _section(field.annotation)
        if section is not None:
            if is_last:
                examples = ", ".join(trial_field_paths(section, f"{path}.")[:3])
                return (
                    f"is a section of the trial spec, not a field; search one of its fields ({examples}, ...)"
                )
            model = section
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


def _check_value(base: dict[str, Any], key: str, value: Any) -> tuple[Any, str | None]:
    """Build the trial with `value` at `key`: (the value as the trial normalises it, None) or (None, why)."""
    paths = key_paths(key)
    if is_joint(key) and (not isinstance(value, list) or len(value) != len(paths)):
        return (
            None,
            f"a joint key takes a list of {len(paths)} values ({', '.join(paths)}), got {shown(value)}",
        )
    data = copy.deepcopy(base)
    set_searched(data, key, value)
    try:
        trial = TrialSpec.model_validate(data)
    except ValidationError as exc:
        return None, "; ".join(_reason(item, paths) for item in exc.errors())
    normalised = trial.model_dump(mode="json")
    checked = [get_path(normalised, path.split(".")) for path in paths]
    return (checked if is_joint(key) else checked[0]), None


def _reason(item: Any, paths: list[str]) -> str:
    """One validation error, located relative to the searched path it concerns."""
    loc = [str(p) for p in item["loc"]]
    message = item["msg"].removeprefix("Value error, ")
    for path in paths:
        parts = path.split(".")
        if loc[: len(parts)] == parts:
            inner = ".".join(loc[len(parts) :])
            where = path if len(paths) > 1 else inner
            return f"{where}: {message}" if where else message
    # A cross-field rule elsewhere in the trial tripped.
    return f"trial.{'.'.join(loc)}: {message}" if loc else message


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
        normalised: list[Any] = []
        problems: list[Problem] = []
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


def _key_problems(key: str, seen: dict[str, str]) -> list[str]:
    """Why `key` cannot be searched: a path that is no leaf field, or one another key already sets."""
    problems = []
    for path in key_paths(key):
        why = _path_problem(path)
        if why:
            problems.append(f"{path}: {why}" if is_joint(key) else why)
        elif path in seen:
            problems.append(f"{path} is already searched by {shown(seen[path])}: a path takes one sampler")
        else:
            seen[path] = key
    return problems


def parse_search(raw: dict[Any, Any], trial: TrialSpec | None) -> tuple[dict[str, Any], list[Problem]]:
    """Parse every search entry, collecting every problem (path, sampler shape, values vs the trial).
    Without a valid base trial the values cannot be checked (the trial's own errors are reported)."""
    base = trial.model_dump(mode="json") if trial is not None else None
    samplers: dict[str, Any] = {}
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for key, entry in raw.items():
        if not isinstance(key, str) or not key:
            problems.append(((str(key),), "search keys are dotted field paths of the trial, e.g. optim.lr"))
            continue
        entry_problems: list[Problem] = [((key,), why) for why in _key_problems(key, seen)]
        sampler, sampler_problems = _parse_sampler(entry)
        entry_problems += [((key, *loc), msg) for loc, msg in sampler_problems]
        if sampler is not None and is_joint(key) and not isinstance(sampler, (GridSampler, ChoiceSampler)):
            entry_problems.append(
                (
                    (key,),
                    f"a joint key takes grid or choice (lists of {len(key_paths(key))} values), not {sampler.kind}",
                )
            )
        if sampler is not None and base is not None and not entry_problems:
            sampler, value_problems = _check_sampler_values(sampler, base, key)
            entry_problems += [((key, *loc), msg) for loc, msg in value_problems]
        problems += entry_problems
        if not entry_problems:
            samplers[key] = sampler
    return samplers, problems


def _possible_values(trial: TrialSpec, search: dict[str, Any], path: str) -> list[Any]:
    for key, sampler in search.items():
        paths = key_paths(key)
        if path in paths:
            values = sampler.possible_values()
            return [value[paths.index(path)] for value in values] if is_joint(key) else values
    return [_trial_value(trial, path)]
