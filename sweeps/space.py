"""A validated SweepSpec → what Ray Tune needs: param space, scheduler, resources, and back again.

The driver builds, roughly:

    Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec), resources(spec)),
        param_space=param_space(spec),
        tune_config=TuneConfig(**tune_config_kwargs(spec)),
        run_config=RunConfig(**run_config_kwargs(spec, default_storage)),
    )

and each trial turns its Tune config back into a TrialSpec with `trial_spec_for(spec, config)`.

The param space is FLAT, keyed by the dotted search paths (`backbone.freeze`), so Tune's progress table
and result columns read like the spec (`config/backbone.freeze`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweeps.model import check_repeats  # re-exported: param_space refuses copies too
from sweeps.sections import default_replicates
from sweeps.spec import (
    AshaSpec,
    ChoiceSampler,
    GridSampler,
    LogUniformSampler,
    QUniformSampler,
    RandIntSampler,
    SweepSpec,
    UniformSampler,
    get_path,
    is_joint,
    key_paths,
    set_path,
)
from trainers.config import TrialSpec, format_validation_error
from trainers.errors import FrostError, shown
from trainers.identity import capacity_key

# The trainer reports this every epoch (trainers/reporting.py): 1-based count of finished epochs.
TIME_ATTR = "epoch"


def tune_domain(sampler: Any) -> Any:
    """One sampler → its Ray Tune search-space object."""
    if isinstance(sampler, GridSampler):
        return tune.grid_search(sampler.values())
    if isinstance(sampler, ChoiceSampler):
        return tune.choice(sampler.values())
    if isinstance(sampler, UniformSampler):
        return tune.uniform(sampler.lo, sampler.hi)
    if isinstance(sampler, LogUniformSampler):
        return tune.loguniform(sampler.lo, sampler.hi)
    if isinstance(sampler, RandIntSampler):
        return tune.randint(sampler.lo, sampler.hi)  # hi exclusive, as documented in the spec
    if isinstance(sampler, QUniformSampler):
        return tune.quniform(sampler.lo, sampler.hi, sampler.q)
    raise TypeError(f"unknown sampler {shown(sampler)}")


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's param_space: {dotted path: domain}, flat."""
    check_repeats(spec)
    return {path: tune_domain(sampler) for path, sampler in spec.search.items()}


def _plain(value: Any) -> Any:
    """numpy scalars (from Tune's samplers) → Python values pydantic accepts everywhere."""
    return value.item() if isinstance(value, np.generic) else value


def trial_spec_for(spec: SweepSpec, config: dict[str, Any]) -> TrialSpec:
    """The base trial with this trial's searched values applied, re-validated. Keys of `config` that are
    not search paths (Tune may add its own) are ignored."""
    data = spec.trial.model_dump(mode="json")
    for path, value in searched_config(spec, config).items():
        set_path(data, path.split("."), value)
    try:
        return TrialSpec.model_validate(data)
    except ValidationError as exc:
        # Only reachable for a drawn value the spec's probes missed; name it as the spec does.
        raise FrostError(
            f"sweep '{spec.name}': trial config {shown(config)} is invalid:\n"
            f"{format_validation_error(exc, prefix='trial.')}"
        ) from None


def searched_config(spec: SweepSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched values by trial path (a joint key's list split into its paths)."""
    values: dict[str, Any] = {}
    for key in spec.search:
        if key in config:
            value = config[key]
            items = zip(key_paths(key), value, strict=True) if is_joint(key) else [(key, value)]
            values.update((path, _plain(item)) for path, item in items)
    return values


def build_scheduler(spec: SweepSpec, state_path: str | Path | None = None) -> TrialScheduler:
    """ASHA on the trainer's `epoch` counter (sweeps/asha.py: strata, rung metric, recorded stops), or FIFO
    (every trial runs all its epochs).

    With `state_path`, ASHA's state is persisted there as JSON and survives a driver restart. Trials that
    differ only in `replicate_paths(spec)` are replicates of one configuration (docs/scheduling.md)."""
    scheduler = spec.scheduler
    if not isinstance(scheduler, AshaSpec):
        return FIFOScheduler()
    from sweeps.asha import PersistentASHA

    if scheduler.max_epochs is None:  # validation fills it in; a spec built without validation has none
        raise FrostError(f"sweep '{spec.name}': scheduler.max_epochs is unset (validate the spec first)")
    return PersistentASHA(
        state_path,
        stratify_by=scheduler.stratify_by,
        replicates_by=replicate_paths(spec),
        rung_metric=scheduler.rung_metric,
        time_attr=TIME_ATTR,
        metric=scheduler.metric,
        mode=scheduler.mode,
        max_t=scheduler.max_epochs,
        grace_period=scheduler.grace_period,
        reduction_factor=scheduler.reduction_factor,
        brackets=scheduler.brackets,
    )


def replicate_paths(spec: SweepSpec) -> list[str]:
    """The paths whose values are replicates of one configuration: the spec's `scheduler.replicates_by`, or
    (unset, on a spec built without validation) the default, [seed] when seed is searched."""
    scheduler = spec.scheduler
    if scheduler.replicates_by is not None:
        return list(scheduler.replicates_by)
    stratify_by = scheduler.stratify_by if isinstance(scheduler, AshaSpec) else None
    return default_replicates(spec.search, stratify_by)


def tune_config_kwargs(spec: SweepSpec, scheduler_state: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments for tune.TuneConfig. ASHA carries its own metric/mode, and Tune refuses them
    twice, so they are passed to TuneConfig only with FIFO (where they rank the results). To rank
    either way use `ranking(spec)` with ResultGrid.get_best_result.

    With `reuse_actors` (the default), one-worker trials reuse their actors: a finished (or early-stopped)
    trial's process runs the next pending trial, so only an actor's first trial pays the imports (torch,
    torchvision: seconds per process) and ASHA's many short trials stay cheap. Tune falls back to a new actor
    when the old trial's thread has not ended within 2 s. A data-parallel trial's actor starts a Ray Train
    run, which is not reused."""
    kwargs: dict[str, Any] = {
        "scheduler": build_scheduler(spec, scheduler_state),
        "num_samples": spec.samples,
        "max_concurrent_trials": spec.max_concurrent_trials,
        "reuse_actors": spec.reuse_actors and spec.resources.workers_per_trial == 1,
    }
    if not isinstance(spec.scheduler, AshaSpec):
        kwargs["metric"], kwargs["mode"] = ranking(spec)
    return kwargs


def ranking(spec: SweepSpec) -> tuple[str, str]:
    """(metric, mode) that orders the trials: the scheduler's."""
    return spec.scheduler.metric, spec.scheduler.mode


def resources(spec: SweepSpec) -> dict[str, float]:
    """Per-trial reservation for tune.with_resources: {"cpu", "gpu"[, "memory" in bytes]}.

    A data-parallel trial (workers_per_trial > 1) reserves nothing for itself: its Tune actor only
    coordinates, and Ray Train reserves the workers (`worker_resources`) as one placement group, all or
    none. Reserving them for the coordinator too would hold every worker's share twice. (Tune refuses an
    empty reservation, so the coordinator's is one byte of memory, a resource every Ray node has.)"""
    if spec.resources.workers_per_trial > 1:
        return {"cpu": 0, "gpu": 0, "memory": 1}
    return _lowercase(worker_resources(spec))


def worker_resources(spec: SweepSpec) -> dict[str, float]:
    """What one worker of a trial reserves, in Ray's resource names ("CPU", "GPU", "memory" in bytes)."""
    reserved: dict[str, float] = {"CPU": spec.resources.cpus, "GPU": spec.resources.gpus}
    if spec.resources.memory_gb is not None:
        reserved["memory"] = int(spec.resources.memory_gb * 1024**3)
    return reserved


def _lowercase(reserved: dict[str, float]) -> dict[str, float]:
    return {name if name == "memory" else name.lower(): amount for name, amount in reserved.items()}


def trials_that_fit(nodes: list[dict[str, float]], spec: SweepSpec) -> int:
    """How many trials of `spec` the nodes (each a dict of Ray resource totals) hold at once: every worker
    is a bundle that fits whole on one node; a trial needs `workers_per_trial` bundles, anywhere."""
    need = {name: amount for name, amount in worker_resources(spec).items() if amount > 0}
    bundles = 0
    for node in nodes:
        bundles += min(
            (math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in need.items()), default=0
        )
    return bundles // spec.resources.workers_per_trial


def describe_trial_needs(spec: SweepSpec) -> str:
    """One trial's reservation, for messages: "2 workers x {CPU: 1}" or "{CPU: 1, GPU: 0.5}"."""
    shown = ", ".join(
        f"{name}: {amount / 1024**3:g} GiB" if name == "memory" else f"{name}: {amount:g}"
        for name, amount in worker_resources(spec).items()
        if amount > 0
    )
    workers = spec.resources.workers_per_trial
    return f"{workers} workers x {{{shown}}}" if workers > 1 else f"{{{shown}}}"


def storage_path(spec: SweepSpec, default: str | Path) -> str:
    """Where Ray Tune keeps the sweep: the spec's storage (a URI as given, a local path made absolute),
    or `default` (the project folder the driver chose)."""
    if spec.storage is not None and "://" in spec.storage:
        return spec.storage
    return str(Path(spec.storage if spec.storage is not None else default).expanduser().resolve())


def run_config_kwargs(spec: SweepSpec, default_storage: str | Path) -> dict[str, Any]:
    """Keyword arguments for tune.RunConfig: name, storage, retries of failed trials."""
    return {
        "name": spec.name,
        "storage_path": storage_path(spec, default_storage),
        "failure_config": tune.FailureConfig(max_failures=spec.max_failures),
    }


# ------------------------------------------------------------------------------- tags and run names

# Short labels for run names; other paths use their last component (or the full path on a clash).
_LABELS = {
    "neck.fpn_channels": "fpn",
    "neck.extra_blocks": "neck_blocks",
    "neck.norm": "neck_norm",
    "heads.convs": "head_convs",
    "heads.norm": "head_norm",
    "input.image_size": "px",
    "data.synth.seed": "data_seed",
}
# Paths whose value reads on its own ("frozen", "resnet50", "fcos").
_BARE = ("backbone.freeze", "backbone.name", "detector")


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "-".join(_text(v) for v in value)
    return str(value)


def trial_tags(trial: TrialSpec) -> dict[str, str]:
    """What a trial is, as flat string tags (MLflow): freeze mode, head-capacity knobs, seed, model.
    The report groups runs by these, so it never has to parse run names."""
    return {
        "freeze": trial.backbone.freeze,
        "freeze_mode": trial.backbone.freeze_mode,
        "backbone": trial.backbone.name,
        "backbone_weights": trial.backbone.weights,
        "backbone_norm": trial.backbone.norm,
        "detector": trial.detector,
        "fpn_channels": str(trial.neck.fpn_channels),
        "neck_extra_blocks": str(trial.neck.extra_blocks),
        "neck_norm": trial.neck.norm,
        "rpn_convs": str(trial.heads.rpn_convs),
        "box_convs": str(trial.heads.box_convs),
        "box_fc": str(trial.heads.box_fc),
        "box_fc_layers": str(trial.heads.box_fc_layers),
        "head_convs": str(trial.heads.convs),
        "head_norm": trial.heads.norm,
        "input_size": str(trial.input.image_size),
        "data_source": trial.data.source,
        "seed": str(trial.seed),
        "trial_digest": trial.digest(),
        "frost.capacity": capacity_key(trial),
    }


def trial_run_name(trial: TrialSpec, searched: list[str]) -> str:
    """A readable run name from the searched paths, freeze mode first: "frozen · box_convs=4 · fpn=128".
    With nothing searched: "<freeze> · <backbone>". Repeats (samples > 1) share a name; tell them apart
    by tags or the Tune trial id."""
    if not searched:
        return f"{trial.backbone.freeze} · {trial.backbone.name}"
    values = trial.model_dump(mode="json")
    ordered = sorted(searched, key=lambda p: p != "backbone.freeze")  # stable: spec order otherwise
    lasts = [p.rsplit(".", 1)[-1] for p in ordered]
    parts = []
    for path, last in zip(ordered, lasts):
        value = get_path(values, path.split("."))
        if path in _BARE:
            parts.append(_text(value))
            continue
        label = _LABELS.get(path) or (last if lasts.count(last) == 1 else path)
        parts.append(f"{label}={_text(value)}")
    return " · ".join(parts)
