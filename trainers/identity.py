"""Which trials answer the same question: the capacity key of a TrialSpec.

The report pairs frozen, partial and fine-tuned trials of the same detector, data and head capacity, and
groups seeds. The key is a digest of the trial's spec with these fields left out:

- `backbone.freeze` — the mode being compared;
- `seed` — repeats of one configuration are its spread, not different configurations;
- fields that only change speed, not what is learned: `train.device`, `train.workers`, `train.amp`
  (used on CUDA only), `train.keep_checkpoints`, `train.log_every`, `eval.every` (the last epoch is always
  evaluated), `eval.batch_size`, and any field named `cache` at any depth (a feature cache changes how fast
  frozen features are computed, not their values).

Everything else (data, detector, backbone name / weights / norm, neck, heads, input, optimiser, epochs,
long-tail buckets) is part of the key: two trials differing in any of it do not pair. docs/report.md.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainers.config import TrialSpec

# (section, field) pairs left out of the capacity key; see the module docstring for why each is.
NOT_CAPACITY: tuple[tuple[str, ...], ...] = (
    ("backbone", "freeze"),
    ("seed",),
    ("train", "device"),
    ("train", "workers"),
    ("train", "amp"),
    ("train", "keep_checkpoints"),
    ("train", "log_every"),
    ("eval", "every"),
    ("eval", "batch_size"),
)
SPEED_ONLY_NAMES = frozenset({"cache"})


def _without_speed_only(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_speed_only(v) for k, v in node.items() if k not in SPEED_ONLY_NAMES}
    return node


def capacity_fields(spec: TrialSpec) -> dict[str, Any]:
    """The spec as JSON data without the fields the capacity key ignores."""
    data = _without_speed_only(spec.model_dump(mode="json"))
    for path in NOT_CAPACITY:
        node = data
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def capacity_key(spec: TrialSpec) -> str:
    """12 hex digits naming the trial's configuration apart from freeze mode, seed and speed-only fields."""
    text = json.dumps(capacity_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
