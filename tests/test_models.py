"""trainers/models.py: freeze semantics, every detector x freeze mode, capacity knobs, classifier weights.

Tiny on purpose: 64 px images, 2 per batch, random init unless a test is about weights. FROST_OFFLINE=1 and a
temporary TORCH_HOME for every test, so nothing tries the network or reads a real hub cache.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

from trainers.config import TrialSpec
from trainers.errors import FrostError
from trainers.models import (
    FrostBackbone,
    build_detector,
    count_parameters,
    trainable_parameters,
)
from trainers.weights import imagenet_weights_file, load_classifier_state

K = 3  # foreground classes


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FROST_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("FROST_HOME", str(tmp_path / "frost-home"))


def make_spec(**sections: object) -> TrialSpec:
    data: dict = {"input": {"image_size": 64}, "backbone": {"weights": "none"}}
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return TrialSpec.model_validate(data)


def batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 24.0, 60.0, 58.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 34.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def train_steps(model: nn.Module, steps: int) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.01, momentum=0.9)
    model.train()
    for step in range(steps):
        images, targets = batch(step)
        loss = sum(model(images, targets).values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------- freezing
EXPECTED_FROZEN = {  # resnet18 body children that must not train, per freeze mode
    "frozen": {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"},
    "partial:2": {"conv1", "bn1", "layer1", "layer2"},
    "finetune": set(),
}


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize("freeze", ["frozen", "partial:2", "finetune"])
def test_freeze_keeps_frozen_weights_and_statistics_fixed(freeze: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_detector(make_spec(backbone={"freeze": freeze, "norm": norm}), K)
    body = model.backbone.body
    frozen = EXPECTED_FROZEN[freeze]

    def is_frozen(name: str) -> bool:
        return name.split(".")[0] in frozen

    for name, param in body.named_parameters():
        assert param.requires_grad != is_frozen(name), name
    before = snapshot(body)
    optimizer = train_steps(model, steps=2)
    after = snapshot(body)

    # Parameters: frozen ones unchanged, trainable ones moved.
    for name, _ in body.named_parameters():
        assert torch.equal(before[name], after[name]) == is_frozen(name), name
    # Buffers (BatchNorm running stats and counters, FrozenBatchNorm2d affine and stats).
    params = dict(body.named_parameters())
    buffers = [k for k in before if k not in params]
    assert buffers
    for name in buffers:
        moved = not torch.equal(before[name], after[name])
        if norm == "frozen_bn" or is_frozen(name):
            assert not moved, name
        else:
            assert moved, name  # BatchNorm2d in a trainable stage does update its statistics
    # Frozen stages stay in eval mode after model.train(); trainable ones are in train mode.
    model.train()
    for name, module in body.named_modules():
        if name and isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.training != is_frozen(name), name

    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in model.parameters())
    assert (trainable == total) == (freeze == "finetune")
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in in_optimizer) == param.requires_grad, name
    assert model.backbone.body_frozen == (freeze == "frozen")


def test_partial_counts_the_stages_in_use() -> None:
    """With returned_stages [2, 3] the trunk ends at layer3, so partial:1 trains layer3."""
    model = build_detector(make_spec(backbone={"returned_stages": [2, 3], "freeze": "partial:1"}), K)
    names = {name.split(".")[0] for name, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert names == {"layer3"}
    assert "layer4" not in dict(model.backbone.body.named_children())


# ------------------------------------------------------------------------------------ detectors x freeze
@pytest.mark.parametrize("freeze", ["frozen", "partial:2", "finetune"])
@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet", "fcos"])
def test_detector_trains_one_step_and_predicts(detector: str, freeze: str) -> None:
    torch.manual_seed(0)
    model = build_detector(make_spec(detector=detector, backbone={"freeze": freeze}), K)
    assert isinstance(model.backbone, FrostBackbone)
    train_steps(model, steps=1)
    model.eval()
    with torch.no_grad():
        outputs = model(batch()[0])
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) >= {"boxes", "labels", "scores"}
        assert out["boxes"].shape[1:] == (4,)
        assert len(out["boxes"]) <= 100
        if len(out["labels"]):
            assert 1 <= int(out["labels"].min()) and int(out["labels"].max()) <= K


def test_mobilenet_stages_and_body_neck_seam() -> None:
    torch.manual_seed(0)
    model = build_detector(make_spec(backbone={"name": "mobilenet_v3_large", "norm": "bn"}), K).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = model.backbone.forward_body(x)
        # C3..C5 = ends of the stride-8, -16 and -32 stages.
        assert [tuple(f.shape[1:]) for f in features.values()] == [(40, 8, 8), (112, 4, 4), (960, 2, 2)]
        pyramid = model.backbone.forward_neck(features)
        assert list(pyramid) == ["0", "1", "2", "pool"]
        assert all(p.shape[1] == 64 for p in pyramid.values())
        whole = model.backbone(x)
    assert all(torch.equal(whole[k], pyramid[k]) for k in pyramid)
    assert model.backbone.level_strides == [8, 16, 32, 64]


@pytest.mark.parametrize("stages", [[], [0, 2], [3, 2], [2, 2], [5]])
def test_bad_returned_stages_name_the_field(stages: list[int]) -> None:
    # Refused by the spec's validation (so `frost validate` names it), before any model is built.
    with pytest.raises(ValidationError, match="returned_stages"):
        make_spec(backbone={"returned_stages": stages})


# ---------------------------------------------------------------------------------------- capacity knobs
def total_params(detector: str = "faster_rcnn", **sections: object) -> int:
    return count_parameters(build_detector(make_spec(detector=detector, **sections), K))[1]


def conv3x3(c: int, norm: bool = False) -> int:
    return 9 * c * c + (2 * c if norm else c)  # bias without norm; weight + bias of the norm with it


def test_faster_rcnn_head_knobs_change_counts_exactly() -> None:
    c = 64
    base = total_params()
    assert total_params(heads={"rpn_convs": 2}) - base == conv3x3(c)
    assert total_params(heads={"box_convs": 1}) - base == conv3x3(c)
    assert total_params(heads={"box_convs": 1, "norm": "gn"}) - base == conv3x3(c, norm=True)
    # One FC layer of width w: (49c + 1) w, then the predictor (w + 1) * 5 (K + 1) (scores + 4 box coords).
    w0, w1 = 128, 256
    assert total_params(heads={"box_fc": w1}) - base == (49 * c + 1 + 5 * (K + 1)) * (w1 - w0)
    assert total_params(heads={"box_fc_layers": 2}) - base == w0 * w0 + w0


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_tower_depth_and_norm(detector: str) -> None:
    c = 64
    base = total_params(detector)
    assert total_params(detector, heads={"convs": 3}) - base == 2 * conv3x3(c)
    # Norm in the towers: each conv drops its bias and gains a norm's weight + bias.
    assert total_params(detector, heads={"norm": "gn"}) - base == 2 * 2 * c
    model = build_detector(make_spec(detector=detector, heads={"norm": "bn", "convs": 1}), K)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.head.classification_head.conv.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in model.head.modules())


@pytest.mark.parametrize(("detector", "levels"), [("faster_rcnn", 4), ("retinanet", 5)])
def test_neck_knobs(detector: str, levels: int) -> None:
    c = 64
    base = total_params(detector)
    # Each aggregation block: top-down, downsampling and bottom-up 3x3 convs between adjacent levels.
    assert total_params(detector, neck={"extra_blocks": 1}) - base == 3 * (levels - 1) * conv3x3(c)
    assert total_params(detector, neck={"extra_blocks": 2}) - base == 6 * (levels - 1) * conv3x3(c)
    assert total_params(detector, neck={"fpn_channels": 96}) > base
    model = build_detector(make_spec(detector=detector, neck={"extra_blocks": 1, "norm": "gn"}), K)
    train_steps(model, steps=1)  # the deeper neck trains and keeps the levels the heads expect


# ----------------------------------------------------------------------------------------------- weights
def classifier_checkpoint(path: Path, builtin_format: bool, arch: str = "resnet18") -> nn.Module:
    torch.manual_seed(1)
    classifier = torchvision.models.resnet18(num_classes=5)
    with torch.no_grad():  # non-trivial BN statistics, so loading them is visible
        for module in classifier.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    state = classifier.state_dict()
    payload = (
        {"arch": arch, "state_dict": state, "num_classes": 5, "meta": {"epochs": 1}}
        if builtin_format
        else state
    )
    torch.save(payload, path)
    return classifier


def assert_body_equals(model: nn.Module, classifier: nn.Module) -> None:
    reference = classifier.state_dict()
    body = model.backbone.body.state_dict()
    compared = 0
    for key, value in body.items():
        if key in reference:
            assert torch.equal(value, reference[key]), key
            compared += 1
    assert compared >= 60  # every conv and BN tensor of the trunk, not just a few


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize("builtin_format", [True, False])
def test_classifier_checkpoint_loads_into_body(tmp_path: Path, builtin_format: bool, norm: str) -> None:
    path = tmp_path / "cls.pt"
    classifier = classifier_checkpoint(path, builtin_format)
    state = load_classifier_state("resnet18", str(path))
    assert state is not None and not any(k.startswith("fc.") for k in state)
    model = build_detector(make_spec(backbone={"weights": str(path), "norm": norm}), K)
    assert_body_equals(model, classifier)
    uri_model = build_detector(make_spec(backbone={"weights": path.as_uri(), "norm": norm}), K)
    assert_body_equals(uri_model, classifier)


def test_weights_none_is_random_init() -> None:
    assert load_classifier_state("resnet18", "none") is None


def test_arch_mismatch_names_both(tmp_path: Path) -> None:
    path = tmp_path / "r34.pt"
    classifier_checkpoint(path, builtin_format=True, arch="resnet34")
    with pytest.raises(FrostError, match=r"r34\.pt.*'resnet34'.*'resnet18'"):
        load_classifier_state("resnet18", str(path))


def test_missing_and_garbage_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FrostError, match=r"backbone\.weights: .*nope\.pt"):
        build_detector(make_spec(backbone={"weights": str(missing)}), K)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(FrostError, match=r"garbage\.pt.*not a readable"):
        load_classifier_state("resnet18", str(garbage))
    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(FrostError, match=r"tensor\.pt"):
        load_classifier_state("resnet18", str(not_a_dict))


def test_keys_that_do_not_fit_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(FrostError, match=r"mobilenet\.pt: keys do not fit a resnet18"):
        load_classifier_state("resnet18", str(path))
    wide = tmp_path / "r50.pt"  # same key names as resnet18 for the stem, other shapes and more keys
    state = torchvision.models.resnet50().state_dict()
    torch.save(state, wide)
    with pytest.raises(FrostError, match=r"r50\.pt: keys do not fit"):
        load_classifier_state("resnet18", str(wide))


def test_unsupported_scheme() -> None:
    with pytest.raises(FrostError, match="s3:// is not supported"):
        load_classifier_state("resnet18", "s3://bucket/cls.pt")


def test_imagenet_offline_without_cache_names_expected_path(tmp_path: Path) -> None:
    _, expected = imagenet_weights_file("resnet18")
    assert expected.parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    with pytest.raises(FrostError) as info:
        build_detector(make_spec(backbone={"weights": "imagenet"}), K)
    message = str(info.value)
    assert "backbone.weights" in message and str(expected) in message
    assert "builtin" in message and "FROST_OFFLINE" in message


def test_imagenet_from_cache_loads_offline(tmp_path: Path) -> None:
    _, expected = imagenet_weights_file("resnet18")
    expected.parent.mkdir(parents=True)
    classifier = classifier_checkpoint(expected, builtin_format=False)
    model = build_detector(make_spec(backbone={"weights": "imagenet"}), K)
    assert_body_equals(model, classifier)


def test_anchor_sizes_follow_strides() -> None:
    model = build_detector(make_spec(input={"image_size": 128}), K)
    sizes = [s[0] for s in model.rpn.anchor_generator.sizes]
    assert sizes == [16, 32, 64, 128]
    assert model.transform.min_size == (128,) and model.transform.max_size == math.ceil(128 * 4 / 3)
    fcos = build_detector(make_spec(detector="fcos"), K)
    assert [s[0] for s in fcos.anchor_generator.sizes] == [8, 16, 32, 64, 128]
