"""The spec reaches Ray Tune as intended: the flat param space expands to the expected trials, each trial's
config maps back to the right TrialSpec, and ASHA on the trainer's `epoch` stops weak trials early."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search.sample import Categorical, Float, Integer

from sweeps.space import (
    build_scheduler,
    describe_trial_needs,
    param_space,
    ranking,
    resources,
    run_config_kwargs,
    searched_config,
    storage_path,
    trial_run_name,
    trial_spec_for,
    trial_tags,
    trials_that_fit,
    tune_config_kwargs,
    worker_resources,
)
from sweeps.spec import SweepSpec, load_sweep_spec
from trainers.config import TrialSpec
from trainers.errors import FrostError

CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "catalog"


def sweep(**fields) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", **fields})


# ----------------------------------------------------------------------------------- translation


def test_param_space_is_flat_and_typed():
    spec = sweep(
        search={
            "backbone.freeze": {"grid": ["frozen", {"partial": 2}]},
            "heads.box_fc": {"choice": [64, 256]},
            "optim.momentum": {"uniform": [0.8, 0.95]},
            "optim.lr": {"loguniform": [0.001, 0.1]},
            "heads.box_convs": {"randint": [0, 5]},
            "optim.weight_decay": {"quniform": [0.0001, 0.001, 0.0001]},
        }
    )
    space = param_space(spec)
    assert list(space) == list(spec.search)  # flat, dotted keys, spec order
    assert space["backbone.freeze"] == {"grid_search": ["frozen", "partial:2"]}
    assert isinstance(space["heads.box_fc"], Categorical) and space["heads.box_fc"].categories == [64, 256]
    momentum, lr = space["optim.momentum"], space["optim.lr"]
    assert isinstance(momentum, Float) and (momentum.lower, momentum.upper) == (0.8, 0.95)
    assert type(momentum.get_sampler()).__name__ == "_Uniform"
    assert isinstance(lr, Float) and type(lr.get_sampler()).__name__ == "_LogUniform"
    convs = space["heads.box_convs"]
    assert isinstance(convs, Integer) and (convs.lower, convs.upper) == (0, 5)
    assert type(space["optim.weight_decay"].get_sampler()).__name__ == "Quantized"


def test_schedulers():
    asha = build_scheduler(load_sweep_spec(CATALOG / "smoke.yaml"))
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert (asha._time_attr, asha._metric, asha._mode, asha._max_t) == ("epoch", "AP", "max", 4)
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [4, 2, 1]
    assert isinstance(build_scheduler(sweep()), FIFOScheduler)


def test_tune_config_and_resources():
    smoke = load_sweep_spec(CATALOG / "smoke.yaml")
    kwargs = tune_config_kwargs(smoke)
    assert kwargs["num_samples"] == 1 and kwargs["max_concurrent_trials"] == 2
    assert "metric" not in kwargs  # ASHA carries its own; Tune refuses them twice
    tune.TuneConfig(**kwargs)
    fifo = tune_config_kwargs(sweep(samples=3))
    assert (fifo["metric"], fifo["mode"], fifo["num_samples"]) == ("AP", "max", 3)
    assert ranking(smoke) == ("AP", "max")
    assert kwargs["reuse_actors"] and not tune_config_kwargs(sweep(reuse_actors=False))["reuse_actors"]
    data_parallel = sweep(resources={"workers_per_trial": 2}, trial={"train": {"batch_size": 8}})
    assert not tune_config_kwargs(data_parallel)["reuse_actors"]  # each trial's Ray Train run: a new actor

    assert resources(smoke) == {"cpu": 1, "gpu": 0}
    coco = load_sweep_spec(CATALOG / "coco.yaml")
    assert resources(coco) == {"cpu": 5, "gpu": 0.5, "memory": 24 * 1024**3}


def test_data_parallel_trials_reserve_their_workers_not_the_coordinator():
    spec = sweep(resources={"workers_per_trial": 4, "cpus": 2, "gpus": 1}, trial={"train": {"batch_size": 8}})
    assert resources(spec) == {"cpu": 0, "gpu": 0, "memory": 1}  # Ray Train reserves the workers
    tune.with_resources(lambda config: None, resources(spec))  # a reservation Tune accepts
    assert worker_resources(spec) == {"CPU": 2, "GPU": 1}
    assert describe_trial_needs(spec) == "4 workers x {CPU: 2, GPU: 1}"
    gpu_node = {"CPU": 8.0, "GPU": 2.0, "memory": 64e9}
    assert trials_that_fit([gpu_node], spec) == 0  # 2 workers per node, 4 needed
    assert trials_that_fit([gpu_node, gpu_node], spec) == 1
    assert trials_that_fit([gpu_node] * 5, spec) == 2  # 10 worker slots, whole trials only
    assert trials_that_fit([{"CPU": 64.0}], spec) == 0  # no GPU anywhere
    one = sweep(resources={"cpus": 1, "gpus": 0.5})
    assert trials_that_fit([gpu_node], one) == 4  # fractions share a GPU
    assert describe_trial_needs(one) == "{CPU: 1, GPU: 0.5}"


def test_storage_and_run_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_path(sweep(), tmp_path / "runs") == str(tmp_path / "runs")
    assert storage_path(sweep(storage="rel/dir"), "/x") == str(tmp_path / "rel" / "dir")
    assert storage_path(sweep(storage="s3://bucket/p"), "/x") == "s3://bucket/p"
    kwargs = run_config_kwargs(sweep(max_failures=5), tmp_path)
    assert kwargs["name"] == "t" and kwargs["failure_config"].max_failures == 5
    tune.RunConfig(**kwargs)


def test_trial_spec_for_applies_searched_values_only():
    spec = sweep(
        trial={"train": {"epochs": 3}},
        search={"neck.fpn_channels": {"grid": [64, 128]}, "heads.box_convs": {"randint": [0, 4]}},
    )
    config = {"neck.fpn_channels": 128, "heads.box_convs": np.int64(3), "optim.lr": 9.0, "__trial_index__": 1}
    trial = trial_spec_for(spec, config)
    assert isinstance(trial, TrialSpec)
    assert (
        trial.neck.fpn_channels == 128 and trial.heads.box_convs == 3 and type(trial.heads.box_convs) is int
    )
    assert trial.optim.lr == TrialSpec().optim.lr  # not a search path: ignored
    assert trial.train.epochs == 3  # the base trial, not the defaults
    assert spec.trial.neck.fpn_channels == 64  # the spec itself is untouched
    with pytest.raises(FrostError, match="trial.heads.box_convs"):
        trial_spec_for(spec, {"heads.box_convs": 99})


def test_a_joint_key_steps_several_paths_together():
    """Capacity from light to heavy: three knobs set together, three trials (not their 27 combinations)."""
    key = "neck.fpn_channels, neck.extra_blocks, heads.box_convs"
    spec = sweep(
        search={
            "backbone.freeze": {"grid": ["frozen", "finetune"]},
            key: {"grid": [[32, 0, 0], [128, 2, 2]]},
        },
        scheduler={"type": "asha", "stratify_by": key, "grace_period": 1, "max_epochs": 2},
        trial={"train": {"epochs": 2}},
    )
    assert spec.trial_count() == 4
    assert spec.searched_paths == [
        "backbone.freeze",
        "neck.fpn_channels",
        "neck.extra_blocks",
        "heads.box_convs",
    ]
    assert param_space(spec)[key] == tune.grid_search([[32, 0, 0], [128, 2, 2]])
    trial = trial_spec_for(spec, {"backbone.freeze": "frozen", key: [np.int64(128), 2, 2]})
    assert (trial.neck.fpn_channels, trial.neck.extra_blocks, trial.heads.box_convs) == (128, 2, 2)
    assert type(trial.neck.fpn_channels) is int
    name = trial_run_name(trial, spec.searched_paths)
    assert name == "frozen · fpn=128 · neck_blocks=2 · box_convs=2"
    light = trial_spec_for(spec, {"backbone.freeze": "finetune", key: [32, 0, 0]})
    assert trial_tags(light)["frost.capacity"] != trial_tags(trial)["frost.capacity"]
    assert (
        trial_tags(light)["frost.capacity"]
        == trial_tags(trial_spec_for(spec, {"backbone.freeze": "frozen", key: [32, 0, 0]}))["frost.capacity"]
    )
    assert searched_config(spec, {key: [32, 0, 0], "other": 1}) == {
        "neck.fpn_channels": 32,
        "neck.extra_blocks": 0,
        "heads.box_convs": 0,
    }


def test_tags_and_run_names():
    trial = TrialSpec.model_validate(
        {
            "backbone": {"freeze": "partial:2"},
            "neck": {"fpn_channels": 128},
            "heads": {"box_convs": 4},
            "seed": 1,
        }
    )
    tags = trial_tags(trial)
    assert tags["freeze"] == "partial:2" and tags["freeze_mode"] == "partial"
    assert (tags["fpn_channels"], tags["box_convs"], tags["seed"]) == ("128", "4", "1")
    assert {
        "box_fc",
        "rpn_convs",
        "neck_extra_blocks",
        "head_convs",
        "neck_norm",
        "head_norm",
        "detector",
    } <= set(tags)
    assert all(isinstance(v, str) for v in tags.values())
    assert trial_run_name(trial, ["heads.box_convs", "neck.fpn_channels", "backbone.freeze"]) == (
        "partial:2 · box_convs=4 · fpn=128"
    )
    assert trial_run_name(trial, ["neck.norm", "heads.norm", "optim.lr", "seed"]) == (
        "neck_norm=none · head_norm=none · lr=0.02 · seed=1"
    )
    assert trial_run_name(trial, []) == "partial:2 · resnet18"


# -------------------------------------------------------------------------------- real Ray Tune


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    if ray.is_initialized():  # another module's cluster, still up: use it, leave it to its owner
        yield
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


def make_trainable():
    # Built inside a function so cloudpickle ships it by value (workers cannot import the test module).
    def trainable(config, spec):
        import time

        from ray import tune as ray_tune

        from sweeps.space import trial_spec_for as to_trial

        trial = to_trial(spec, config)
        # AP grows with the searched box-head depth: the deeper, the better, at every epoch.
        for epoch in range(1, trial.train.epochs + 1):
            time.sleep(0.05)
            ap = trial.heads.box_convs / 10 + epoch / 1000
            ray_tune.report({"epoch": epoch, "AP": ap, "trial_digest": trial.digest()})

    return trainable


def fit(spec: SweepSpec, storage: Path):
    trainable = tune.with_resources(tune.with_parameters(make_trainable(), spec=spec), resources(spec))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(**tune_config_kwargs(spec)),
        run_config=tune.RunConfig(**run_config_kwargs(spec, storage), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    return results


@pytest.mark.integration
def test_grid_expands_and_configs_map_back_to_trials(ray_cluster, tmp_path):
    spec = sweep(
        trial={"train": {"epochs": 2}},
        search={
            "backbone.freeze": {"grid": ["frozen", "finetune"]},
            "neck.fpn_channels": {"grid": [64, 128]},
            "optim.lr": {"loguniform": [0.001, 0.1]},
        },
        samples=2,
        max_concurrent_trials=2,
    )
    results = fit(spec, tmp_path)
    assert len(results) == spec.trial_count() == 8
    seen = Counter((r.config["backbone.freeze"], r.config["neck.fpn_channels"]) for r in results)
    assert seen == {(f, c): 2 for f in ("frozen", "finetune") for c in (64, 128)}
    lrs = [r.config["optim.lr"] for r in results]
    assert all(0.001 <= lr <= 0.1 for lr in lrs) and len(set(lrs)) == 8  # drawn anew per trial
    for result in results:
        trial = trial_spec_for(spec, result.config)
        assert trial.backbone.freeze == result.config["backbone.freeze"]
        assert trial.neck.fpn_channels == result.config["neck.fpn_channels"]
        assert trial.optim.lr == result.config["optim.lr"]
        assert result.metrics["trial_digest"] == trial.digest()  # the worker built the same trial
        assert result.metrics["epoch"] == 2  # FIFO: everyone runs to the end
    assert (tmp_path / "t").is_dir()  # Tune wrote under the spec's name in the given storage


@pytest.mark.integration
def test_asha_stops_weak_trials_early(ray_cluster, tmp_path):
    spec = sweep(
        trial={"train": {"epochs": 4}},
        # Strongest first: a later, weaker trial always meets a rung that stronger ones already set.
        search={"heads.box_convs": {"grid": [4, 3, 2, 1, 0]}},
        scheduler={"type": "asha", "metric": "AP", "mode": "max", "grace_period": 1, "reduction_factor": 2},
        max_concurrent_trials=2,
    )
    results = fit(spec, tmp_path)
    epochs = {r.config["heads.box_convs"]: r.metrics["epoch"] for r in results}
    assert len(epochs) == 5
    assert epochs[4] == 4, epochs  # the best ran to max_epochs
    assert epochs[0] == 1 and epochs[1] == 1, epochs  # the weakest stopped at the first rung
    assert sum(e < 4 for e in epochs.values()) >= 3, epochs
