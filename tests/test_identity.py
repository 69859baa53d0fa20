"""The capacity key pairs trials that differ only in freeze mode, seed or speed-only fields; the parameter
split and the refusal of copied samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sweeps.space import check_repeats, trial_tags
from sweeps.spec import SweepSpec
from trainers.config import TrialSpec
from trainers.errors import FrostError
from trainers.identity import _without_speed_only, capacity_fields, capacity_key
from trainers.measures import TrialMeasures, current_rss_mb, peak_rss_mb, start_peak_rss
from trainers.models import build_detector


def trial(**sections) -> TrialSpec:
    return TrialSpec.model_validate(sections)


def test_freeze_seed_and_speed_only_fields_pair():
    base = capacity_key(trial())
    assert capacity_key(trial(seed=7)) == base
    assert capacity_key(trial(backbone={"freeze": "finetune"})) == base
    assert capacity_key(trial(backbone={"freeze": "partial:2"})) == base
    speed = trial(
        train={"device": "cpu", "workers": 3, "amp": False, "keep_checkpoints": 5, "log_every": 1},
        eval={"every": 3, "batch_size": 2},
    )
    assert capacity_key(speed) == base


def test_a_cache_flag_pairs_wherever_it_sits():
    """A `cache` field, wherever it sits (TrialSpec's `cache` section, or one added later), stays out of the key."""
    data = trial().model_dump(mode="json")
    with_cache = {**data, "cache": {"features": False}, "train": {**data["train"], "cache": True}}
    assert "cache" in data and _without_speed_only(with_cache) == _without_speed_only(data)
    assert "cache" not in _without_speed_only(data)
    fields = capacity_fields(trial())
    assert "seed" not in fields and "freeze" not in fields["backbone"] and "device" not in fields["train"]


@pytest.mark.parametrize(
    "change",
    [
        {"neck": {"fpn_channels": 128}},
        {"neck": {"extra_blocks": 1}},
        {"heads": {"box_convs": 2}},
        {"detector": "retinanet"},
        {"train": {"epochs": 7}},
        {"optim": {"lr": 0.01}},
        {"data": {"synth": {"seed": 3}}},
    ],
)
def test_capacity_fields_do_not_pair(change):
    assert capacity_key(trial(**change)) != capacity_key(trial())


def test_capacity_key_is_a_tag_of_every_trial_run():
    tags = trial_tags(trial(seed=2, neck={"fpn_channels": 32}))
    assert tags["frost.capacity"] == capacity_key(trial(neck={"fpn_channels": 32}))
    assert len(tags["frost.capacity"]) == 12


def test_parameter_split_adds_up():
    spec = trial(backbone={"weights": "none", "freeze": "frozen"}, neck={"fpn_channels": 16})
    model = build_detector(spec, 3)
    frozen = TrialMeasures.of(model, torch.device("cpu"))
    body = sum(p.numel() for p in model.backbone.body.parameters())
    assert frozen.body_params == body
    assert (
        frozen.head_params == frozen.trainable_params == frozen.total_params - body
    )  # nothing in the body trains
    tuned = TrialMeasures.of(
        build_detector(
            spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"freeze": "finetune"})}), 3
        ),
        torch.device("cpu"),
    )
    assert tuned.head_params == frozen.head_params  # freezing never touches the head
    assert tuned.trainable_params == tuned.total_params
    metrics = frozen.epoch_metrics(peak=frozen.loaded_rss_mb + 100.0)
    assert metrics["trainable_share"] == pytest.approx(frozen.trainable_params / frozen.total_params)
    assert metrics["train_memory_mb"] == pytest.approx(100.0)
    assert metrics["device"] == "cpu" and metrics["peak_memory_mb"] == frozen.loaded_rss_mb + 100.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="no /proc/self/clear_refs (not Linux)")
def test_a_trial_peak_rss_starts_at_the_trial_not_at_the_process():
    """A process that ran a big trial before (Ray Tune's reuse_actors) does not lend it its peak."""
    import numpy as np

    block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
    del block
    assert peak_rss_mb() >= current_rss_mb() + 200
    assert start_peak_rss()
    base = current_rss_mb()
    assert peak_rss_mb() < base + 50
    block = np.ones(64 * 2**20 // 8)
    assert peak_rss_mb() >= base + 60  # the new peak is measured again
    del block


def sweep(**fields) -> SweepSpec:
    return SweepSpec.model_validate({"name": "t", **fields})


def test_repeats_without_a_searched_seed_are_refused():
    with pytest.raises(FrostError, match=r"samples: 3 .*seed: \{grid: \[0, 1, 2\]\}"):
        check_repeats(sweep(samples=3, search={"backbone.freeze": {"grid": ["frozen", "finetune"]}}))
    with pytest.raises(FrostError, match="samples: 2"):
        check_repeats(sweep(samples=2))
    check_repeats(sweep(samples=3, search={"seed": {"grid": [0, 1, 2]}}))  # seeds searched: distinct
    check_repeats(sweep(samples=3, search={"optim.lr": {"loguniform": [0.001, 0.1]}}))  # drawn anew
    check_repeats(sweep(samples=1))


def test_frost_validate_refuses_copied_samples(tmp_path, capsys):
    from service.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nsamples: 2\nsearch:\n  backbone.freeze: {grid: [frozen, finetune]}\n")
    assert main(["validate", str(spec)]) == 2
    assert "samples: 2 repeats of the same grid without a searched seed" in capsys.readouterr().err
    spec.write_text("name: s\nsamples: 1\nsearch:\n  seed: {grid: [0, 1]}\n")
    assert main(["validate", str(spec)]) == 0
