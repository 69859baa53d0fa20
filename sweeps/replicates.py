"""Replicates and configurations (docs/scheduling.md): a trial's configuration is its config without the
replicate paths (`scheduler.replicates_by`, e.g. `seed`), so the seeds of one configuration share an id and
ASHA judges them as one unit, on the mean of their values."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sweeps.search import is_joint, key_paths


def _plain(value: Any) -> Any:
    # numpy scalars from Tune's samplers hash as the Python values they stand for
    return value.item() if isinstance(value, np.generic) else repr(value)


def _without(config: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """The config with the replicate paths left out: a flat key equal to a path, a joint key holding one (its
    other paths are replicate paths too: validation), or a nested entry."""
    kept: dict[str, Any] = {}
    for key, value in config.items():
        if key in paths or (is_joint(key) and any(p in paths for p in key_paths(key))):
            continue
        nested = [p[len(key) + 1 :] for p in paths if p.startswith(f"{key}.")]
        kept[key] = _without(value, nested) if nested and isinstance(value, dict) else value
    return kept


def configuration_id(config: dict[str, Any], replicates_by: Sequence[str]) -> str:
    """A stable digest of the trial's config without its replicate paths: equal for replicates of one
    configuration, in any process (no Python hash)."""
    text = json.dumps(_without(config, replicates_by), sort_keys=True, default=_plain, separators=(",", ":"))
    return "config-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (a replicate without a metric does not void its configuration's record,
    as Ray's cutoff ignores NaN records); NaN when none is."""
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else math.nan
