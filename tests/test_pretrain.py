import os
import subprocess
import sys

import pytest
import torch
import torchvision

from service.cli import main
from trainers.errors import FrostError
from trainers.synth.pretrain import (
    PretrainSpec,
    builtin_weights_path,
    ensure_builtin_classifier,
    ensure_classifier,
    load_pretrain_spec,
    pretrain_classifier,
    weights_path,
)

# About 10 s of training on 2 cores; reaches 0.49–0.65 val accuracy over seeds 0–2 (chance 0.25).
TINY = ["classes=4", "train_images=480", "val_images=80", "image_size=48", "epochs=4", "batch_size=16"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """`frost pretrain` end to end on the tiny recipe."""
    path = tmp_path_factory.mktemp("pretrain") / "tiny.pt"
    args = ["pretrain", "--backbone", "resnet18", "--out", str(path)]
    for override in TINY:
        args += ["--set", override]
    assert main(args) == 0
    return path


def test_tiny_pretraining_beats_chance_and_loads_weights_only(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    assert checkpoint["arch"] == "resnet18" and checkpoint["num_classes"] == 4
    meta = checkpoint["meta"]
    assert meta["chance"] == 0.25
    assert meta["val_acc"] >= 0.4, meta["val_acc"]
    assert PretrainSpec.model_validate(meta["spec"]) == load_pretrain_spec("resnet18", TINY)
    assert len(meta["class_names"]) == 4

    model = torchvision.models.resnet18(num_classes=4)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every key and shape matches
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 4)


def test_mobilenet_pretrains_and_loads(tmp_path):
    spec = load_pretrain_spec(
        "mobilenet_v3_large", ["classes=3", "train_images=48", "val_images=12", "epochs=1"]
    )
    path = pretrain_classifier(spec, tmp_path / "mobilenet.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["arch"] == "mobilenet_v3_large"
    torchvision.models.mobilenet_v3_large(num_classes=3).load_state_dict(checkpoint["state_dict"])


def test_ensure_trains_once_then_reuses(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FROST_HOME", str(tmp_path))
    spec = load_pretrain_spec("resnet18", ["classes=3", "train_images=48", "val_images=12", "epochs=1"])
    path = ensure_classifier(spec)
    assert path == weights_path(spec) and path.parent == tmp_path / "pretrained" and path.is_file()
    assert "pretraining it now" in capfd.readouterr().err
    stamp = path.stat().st_mtime_ns
    assert ensure_classifier(spec) == path
    assert capfd.readouterr().err == ""
    assert path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []


def test_builtin_path_is_keyed_by_the_default_recipe(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FROST_HOME", str(tmp_path))
    path = builtin_weights_path("resnet18")
    assert path.parent == tmp_path / "pretrained" and path.name.startswith("resnet18-")
    assert path == weights_path(PretrainSpec(backbone="resnet18"))
    assert weights_path(load_pretrain_spec("resnet18", ["epochs=9"])) != path
    assert builtin_weights_path("resnet50") != path
    # A cached file is reused as is: nothing is trained.
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")
    assert ensure_builtin_classifier("resnet18") == path
    assert path.read_bytes() == b"cached"
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("backbone", "overrides", "field"),
    [
        ("resnet18", ["epochs=0"], "epochs"),
        ("resnet18", ["classes=abc"], "classes"),
        ("resnet18", ["nosuch=1"], "nosuch: unknown field"),
        ("vgg16", [], "backbone"),
    ],
)
def test_bad_spec_names_the_field(backbone, overrides, field):
    with pytest.raises(FrostError, match=field):
        load_pretrain_spec(backbone, overrides)


def test_cli_bad_override_exits_2(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "x.pt"), "--set", "lr=-1"]) == 2
    assert "lr" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.integration
def test_concurrent_callers_pretrain_once(tmp_path):
    code = (
        "from trainers.synth.pretrain import ensure_classifier, load_pretrain_spec; "
        "print(ensure_classifier(load_pretrain_spec('resnet18', "
        "['classes=3', 'train_images=96', 'val_images=12', 'epochs=2'])))"
    )
    env = {**os.environ, "FROST_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert len({out.strip() for out, _ in results}) == 1
    assert sum("pretraining it now" in err for _, err in results) == 1
    assert len([p for p in (tmp_path / "pretrained").iterdir() if p.suffix == ".pt"]) == 1
