"""trainers/features.py: the frozen-feature cache equals a live forward, is keyed exactly, is built once, is
verified before it is read, respects its budget, and leaves a frozen trial's results where they were."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torchvision.models._utils import IntermediateLayerGetter

from service.cli import main
from trainers import features
from trainers.config import TrialSpec, load_trial_spec
from trainers.data import CocoDetection, load_datasets
from trainers.feature_store import LOCK_FILE
from trainers.features import (
    cache_root,
    dataset_digest,
    detector_parts,
    model_key,
    prepare_feature_cache,
    shard_key,
    shard_lock,
    shard_path,
)
from trainers.files import file_lock
from trainers.models import FrostBackbone, build_detector
from trainers.train import run_trial

FP16_TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}  # float16 keeps ~3 significant digits


@pytest.fixture(autouse=True)
def empty_cache():
    """Every test starts from an empty cache (the session's project folder holds the tiny data)."""
    shutil.rmtree(cache_root(), ignore_errors=True)
    yield
    shutil.rmtree(cache_root(), ignore_errors=True)


def trial(tiny_overrides: list[str], *more: str) -> TrialSpec:
    return load_trial_spec(None, [*tiny_overrides, *more])


def detector(spec: TrialSpec) -> torch.nn.Module:
    torch.manual_seed(0)  # the same body weights for every spec that builds the same body
    return build_detector(spec, spec.data.synth.classes)


class Counter:
    """Counts images through the body (the frozen prefix alone, and the whole body: the uncached path) and
    images read from disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.prefix = self.body = self.reads = 0
        prefix, body, read = (
            FrostBackbone.forward_prefix,
            IntermediateLayerGetter.forward,
            CocoDetection.__getitem__,
        )

        def count_read(dataset, index):
            self.reads += 1
            return read(dataset, index)

        monkeypatch.setattr(CocoDetection, "__getitem__", count_read)

        def count_prefix(module, x):
            self.prefix += x.shape[0]
            return prefix(module, x)

        def count_body(module, x):
            self.body += x.shape[0]
            return body(module, x)

        monkeypatch.setattr(FrostBackbone, "forward_prefix", count_prefix)
        monkeypatch.setattr(IntermediateLayerGetter, "forward", count_body)


@pytest.mark.parametrize(
    "detector_name, freeze, norm",
    [
        ("faster_rcnn", "frozen", "frozen_bn"),
        ("retinanet", "frozen", "frozen_bn"),
        ("fcos", "frozen", "frozen_bn"),
        ("faster_rcnn", "frozen", "bn"),
        ("faster_rcnn", "partial:2", "bn"),
        ("retinanet", "partial:4", "frozen_bn"),
    ],
)
def test_cached_features_equal_a_live_forward(tiny_overrides, detector_name, freeze, norm):
    spec = trial(
        tiny_overrides, f"detector={detector_name}", f"backbone.freeze={freeze}", f"backbone.norm={norm}"
    )
    train, val = load_datasets(spec.data)
    model = detector(spec)
    cache, report = prepare_feature_cache(spec, model, train, val)
    assert cache is not None and report.used and report.bytes_built > 0
    transform, backbone = detector_parts(model)
    model.train()  # the training path: frozen stages stay in eval, trainable ones use batch statistics
    for split, dataset, flip in (("train", train, True), ("train", train, False), ("val", val, False)):
        indices = [0, 3, 5]
        images = [dataset[i][0].float().div(255) for i in indices]
        images = [image.flip(-1) for image in images] if flip else images
        inputs = transform(images)[0].tensors
        ids = [dataset.image_ids[i] for i in indices]
        with torch.no_grad():
            live_prefix, live_body, live_pyramid = (
                backbone.forward_prefix(inputs),
                backbone.forward_body(inputs),
                backbone(inputs),
            )
            read = cache.read(split, ids, [flip] * 3)
            cached_prefix = read(inputs)
            cached_body = backbone.forward_body(inputs, read)
            cached_pyramid = backbone(inputs, read)
        assert list(cached_prefix) == list(live_prefix) and list(cached_body) == list(live_body)
        for name in live_prefix:  # what the cache stores: float16 rounding of the live features
            torch.testing.assert_close(cached_prefix[name], live_prefix[name], **FP16_TOLERANCE)
        # What the neck sees, after trainable stages (partial:K) that carry the rounding on
        for name in live_body:
            torch.testing.assert_close(cached_body[name], live_body[name], rtol=1e-2, atol=1e-2)
        for name in live_pyramid:
            torch.testing.assert_close(cached_pyramid[name], live_pyramid[name], rtol=1e-2, atol=1e-2)


def test_the_key_changes_with_every_keyed_input_and_nothing_else(tiny_overrides, tmp_path):
    base = trial(tiny_overrides)
    base_key = model_key(base, detector(base))
    same = ["detector=retinanet", "neck.fpn_channels=32", "heads.box_fc=64", "seed=7", "optim.lr=0.1",
            "train.epochs=5", "input.hflip=0.0", "cache.budget_mb=10"]  # fmt: skip
    for override in same:
        spec = trial(tiny_overrides, override)
        assert model_key(spec, detector(spec)) == base_key, override
    keyed = ["backbone.name=resnet34", "backbone.norm=bn", "backbone.returned_stages=[3,4]",
             "backbone.freeze=partial:1", "input.image_size=96", "cache.dtype=float32"]  # fmt: skip
    keys = [base_key]
    for override in keyed:
        spec = trial(tiny_overrides, override)
        keys.append(model_key(spec, detector(spec)))
    other_weights = detector(base)
    with torch.no_grad():
        detector_parts(other_weights)[1].body.layer1[0].conv1.weight.add_(1e-3)
    keys.append(model_key(base, other_weights))
    paths = {shard_path(tmp_path, shard_key(key, "train", "d", False)) for key in keys}
    assert len(paths) == len(keyed) + 2  # every keyed change gives its own shard file

    train, _ = load_datasets(base.data)
    digest = dataset_digest(train)
    variants = [shard_key(base_key, "train", digest, False), shard_key(base_key, "train", digest, True),
                shard_key(base_key, "val", digest, False)]  # fmt: skip
    copy = tmp_path / "data"
    shutil.copytree(train.image_dir.parent, copy)
    changed = load_datasets(trial(tiny_overrides, "data.source=coco", f"data.root={copy}").data)[0]
    assert dataset_digest(changed) == digest  # a copy is the same data
    image = copy / train.image_dir.name / train.coco.imgs[train.image_ids[-1]]["file_name"]
    image.write_bytes(image.read_bytes()[:-1] + bytes([image.read_bytes()[-1] ^ 1]))
    variants.append(shard_key(base_key, "train", dataset_digest(changed), False))
    assert len({shard_path(tmp_path, key) for key in variants}) == 4


def test_a_second_trial_reuses_the_cache_without_running_the_body(tiny_overrides, tmp_path, monkeypatch):
    counter = Counter(monkeypatch)
    spec = trial(tiny_overrides, "train.epochs=1")
    first = run_trial(spec, tmp_path / "first")
    built = counter.prefix
    assert first["cache_used"] is True and first["cache_build_s"] > 0 and first["cache_bytes"] > 0
    assert built == 24 * 2 + 8 + 1  # train in both orientations, val once, one probe to estimate the size
    assert counter.body == 0  # training and evaluation never ran the whole body
    # Another trial of the same key (with `weights=none` the seed draws the body weights: it stays)
    other = trial(tiny_overrides, "train.epochs=1", "detector=fcos", "heads.convs=1", "optim.lr=0.01")
    second = run_trial(other, tmp_path / "second")
    assert second["cache_used"] is True and second["cache_build_s"] == 0 and second["cache_bytes"] == 0
    assert counter.prefix == built and counter.body == 0  # zero body forwards in the second trial
    # ... and no image read but the one that tells the transform's output size: the cache stands in for the
    # pixels, the annotations give the sizes.
    assert counter.reads == built + 1
    shards = sorted(cache_root().rglob("*.fc"))
    assert len(shards) == 3
    assert first["cache_bytes"] == sum(p.stat().st_size for p in shards)


def test_two_concurrent_trials_build_the_cache_once(tiny_overrides, tmp_path):
    load_datasets(trial(tiny_overrides).data)  # the data exists before both start: only the cache races
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = []
    for name in ("a", "b"):
        args = [sys.executable, "-m", "service.cli", "train", "--out", str(tmp_path / name)]
        for item in [*tiny_overrides, "train.epochs=1"]:
            args += ["--set", item]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    assert all(final["cache_used"] for final, _ in results)
    # Each shard was built once, by one of the two (they may share the work: a trial builds the missing shards
    # no one else is building, then waits for the others); the bytes they report built are the cache's.
    built = []
    for _, err in results:
        found = re.search(r"built (\d) shard\(s\)", err)  # none: it started after the other had built all
        assert found or "reading 3 shard(s)" in err, err[-2000:]
        built.append(int(found.group(1)) if found else 0)
    assert sum(built) == 3
    shards = list(cache_root().rglob("*.fc"))
    assert len(shards) == 3
    assert sum(final["cache_bytes"] for final, _ in results) == sum(p.stat().st_size for p in shards)


def test_a_trial_builds_the_shards_no_one_else_is_building_then_waits_for_the_rest(tiny_overrides):
    """Another trial 'building' one shard (its lock held here): this one builds the other two meanwhile, then
    waits; when that builder goes away without writing it (a killed trial), this one builds it too."""
    spec = trial(tiny_overrides)
    train, val = load_datasets(spec.data)
    model = detector(spec)
    cache, _ = prepare_feature_cache(spec, model, train, val)
    assert cache is not None
    paths = {name: shard.path for name, shard in cache.shards.items()}
    sizes = {name: path.stat().st_size for name, path in paths.items()}
    for path in paths.values():
        path.unlink()
    held = paths[("train", False)]
    done: list = []
    with file_lock(shard_lock(held)):
        worker = threading.Thread(target=lambda: done.append(prepare_feature_cache(spec, model, train, val)))
        worker.start()
        deadline = time.monotonic() + 300
        while not all(p.exists() for n, p in paths.items() if p != held) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(p.exists() for p in paths.values() if p != held), (
            "the free shards were not built meanwhile"
        )
        time.sleep(0.5)
        assert (
            worker.is_alive() and not held.exists()
        )  # waiting for the 'other trial', not building its shard
    worker.join(timeout=300)
    ((cache, report),) = done
    assert cache is not None and held.exists()
    assert report.bytes_built == sum(sizes.values())  # all three, each once


def test_over_budget_the_trial_trains_uncached_and_says_so(tiny_overrides, tmp_path, capsys, monkeypatch):
    counter = Counter(monkeypatch)
    spec = trial(tiny_overrides, "train.epochs=1", "cache.budget_mb=0.1")
    result = run_trial(spec, tmp_path / "t")
    err = capsys.readouterr().err
    # ResNet-18 C3..C5 at 64 px: (128*8*8 + 256*4*4 + 512*2*2) * 2 bytes = 28 KiB per image and orientation,
    # x (24 * 2 + 8) = 1568 KiB = 1.53 MiB
    assert "estimated 1.5 MiB exceeds the budget of 0.1 MiB" in err and "training without the cache" in err
    assert result["cache_used"] is False and result["cache_bytes"] == 0
    assert not list(cache_root().rglob("*.fc"))
    assert counter.body > 0  # it trained, uncached


def test_images_unlike_their_annotated_size_train_uncached_and_say_so(tiny_overrides, tmp_path, capsys):
    """A cached trial never reads an image again, only its annotated size: building checks they agree."""
    spec = trial(tiny_overrides)
    root = tmp_path / "data"
    shutil.copytree(spec.data.resolved_root(), root)
    splits = {}
    for split in (spec.data.train, spec.data.val):
        splits[split.annotations] = json.loads((root / split.annotations).read_text())
        for image in splits[split.annotations]["images"]:  # 64 x 64 files; every box still fits in 80 x 80
            image["width"] = image["height"] = 80
        (root / split.annotations).write_text(json.dumps(splits[split.annotations]))
    result = run_trial(
        trial(tiny_overrides, "train.epochs=1", "data.source=coco", f"data.root={root}"), tmp_path / "t"
    )
    err = capsys.readouterr().err
    images = splits[spec.data.train.annotations]["images"]
    first = root / spec.data.train.images / min(images, key=lambda i: i["id"])["file_name"]
    assert f"feature cache: off: {first} is 64x64 but its annotation says 80x80; training without" in err
    assert result["cache_used"] is False
    assert not list(cache_root().rglob("*.tmp")), "the aborted shard left a temporary file"


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_corrupt_shard_is_rebuilt_not_read(tiny_overrides, capsys, damage, monkeypatch):
    spec = trial(tiny_overrides)
    train, val = load_datasets(spec.data)
    model = detector(spec)
    cache, _ = prepare_feature_cache(spec, model, train, val)
    assert cache is not None
    shard = cache.shards[("train", True)].path
    good = shard.read_bytes()
    bad = good[: len(good) // 2] if damage == "truncate" else bytearray(good)
    if damage == "flip a byte":
        bad[len(good) // 2] ^= 0x40
    shard.write_bytes(bytes(bad))
    monkeypatch.setattr(features, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    cache, report = prepare_feature_cache(spec, model, train, val)
    err = capsys.readouterr().err
    reason = (
        "checksum mismatch" if damage == "flip a byte" else f"{len(good) // 2} bytes, expected {len(good)}"
    )
    assert f"{shard}: {reason}: rebuilding it" in err and "built 1 shard(s)" in err
    # A long build says how far it is (here after every batch of 16 of the 24 images).
    assert f"building train flipped ({shard.name}): 24 images" in err
    assert f"building train flipped ({shard.name}): 16/24 images (67 %)" in err
    assert report.bytes_built == len(good) and shard.read_bytes() == good  # rebuilt, bit for bit


def test_cached_and_uncached_frozen_trials_agree(tiny_overrides, tmp_path):
    spec = trial(tiny_overrides)
    cached = run_trial(spec, tmp_path / "cached")
    plain = run_trial(trial(tiny_overrides, "cache.features=false"), tmp_path / "plain")
    exact = run_trial(trial(tiny_overrides, "cache.dtype=float32"), tmp_path / "float32")
    assert cached["cache_used"] and exact["cache_used"] and not plain["cache_used"]
    histories = {}
    for name in ("cached", "plain", "float32"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        histories[name] = [json.loads(line)["loss"] for line in lines]
    # Same global RNG draws with and without the cache: float32 features give the same losses to rounding,
    # float16 ones to its precision.
    assert histories["float32"] == pytest.approx(histories["plain"], rel=1e-4)
    assert histories["cached"] == pytest.approx(histories["plain"], rel=1e-2)
    for key in ("AP", "AP50", "AP_r"):
        assert cached[key] == pytest.approx(plain[key], abs=0.02), key


def test_fine_tuned_trials_ignore_the_cache_and_the_cli_can_turn_it_off(tiny_overrides, tmp_path, capsys):
    def train(out, *more):
        args = ["train", "--out", str(tmp_path / out)]
        for item in [*tiny_overrides, "train.epochs=1", *more]:
            args += ["--set", item]
        assert main(args) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out.strip().splitlines()[-1]), captured.err

    final, err = train("ft", "backbone.freeze=finetune")
    assert final["cache_used"] is False and "ignored (cache.features) for a fine-tuned backbone" in err
    final, err = train("off", "cache.features=false")
    assert final["cache_used"] is False and "off (cache.features=false)" in err
    assert not list(cache_root().rglob("*.fc"))
    final, _ = train("on")
    assert final["cache_used"] is True

    assert main(["cache", "ls"]) == 0
    listed = capsys.readouterr().out
    assert "resnet18 frozen_bn cut=layer4 float16  3 shard(s)" in listed
    assert main(["cache", "du"]) == 0
    size = sum(p.stat().st_size for p in cache_root().rglob("*") if p.is_file())
    assert capsys.readouterr().out.startswith(f"{size / 2**20:.1f} MiB in 1 key(s)")
    key_dir = next(cache_root().rglob("*.fc")).parent
    with file_lock(key_dir / LOCK_FILE, shared=True):  # as a trial preparing (building) its shards holds it
        assert main(["cache", "clear", "--root", str(cache_root().parents[1])]) == 0
        assert f"kept {key_dir.name}: a trial is building it right now" in capsys.readouterr().out
    assert len(list(cache_root().rglob("*.fc"))) == 3
    assert main(["cache", "clear", "--root", str(cache_root().parents[1])]) == 0
    assert capsys.readouterr().out.startswith(f"freed {size / 2**20:.1f} MiB")
    assert not list(cache_root().rglob("*.fc"))
