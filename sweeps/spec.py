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
against the trial (epochs, evaluation cadence, strata) and the metrics the trainer reports.

This module is the one place to import from; the parts live beside it:

    sweeps/samplers.py   the samplers
    sweeps/search.py     trial field paths, parsing and checking the search
    sweeps/sections.py   scheduler (ASHA / FIFO), resources, tracking; ASHA's checks against the trial
    sweeps/model.py      SweepSpec itself, spec_warnings
    sweeps/loading.py    YAML + overrides in, YAML out, diffs

None of them imports Ray or MLflow, so `frost validate` and `frost schema` stay fast; the Ray Tune
translation lives in sweeps/space.py.
"""

from __future__ import annotations

from sweeps.loading import (
    apply_sweep_overrides,
    dump_sweep_spec,
    format_sweep_error,
    load_sweep_spec,
    spec_diff,
)
from sweeps.model import STORAGE_SCHEMES, SweepSpec, spec_warnings
from sweeps.samplers import (
    SAMPLERS,
    ChoiceSampler,
    GridSampler,
    LogUniformSampler,
    QUniformSampler,
    RandIntSampler,
    Sampler,
    UniformSampler,
)
from sweeps.search import (
    Problem,
    get_path,
    is_joint,
    key_paths,
    parse_search,
    searched_paths,
    set_path,
    set_searched,
    trial_field_paths,
)
from sweeps.sections import (
    METRIC_DIRECTIONS,
    RUNG_METRICS,
    SCHEDULER_METRICS,
    AshaSpec,
    FifoSpec,
    ResourcesSpec,
    SchedulerSpec,
    TrackingSpec,
)

__all__ = [
    "METRIC_DIRECTIONS",
    "RUNG_METRICS",
    "SAMPLERS",
    "SCHEDULER_METRICS",
    "STORAGE_SCHEMES",
    "AshaSpec",
    "ChoiceSampler",
    "FifoSpec",
    "GridSampler",
    "LogUniformSampler",
    "Problem",
    "QUniformSampler",
    "RandIntSampler",
    "ResourcesSpec",
    "Sampler",
    "SchedulerSpec",
    "SweepSpec",
    "TrackingSpec",
    "UniformSampler",
    "apply_sweep_overrides",
    "dump_sweep_spec",
    "format_sweep_error",
    "get_path",
    "is_joint",
    "key_paths",
    "load_sweep_spec",
    "parse_search",
    "searched_paths",
    "set_path",
    "set_searched",
    "spec_diff",
    "spec_warnings",
    "trial_field_paths",
]
