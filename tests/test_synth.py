import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from service.cli import main
from trainers.config import DataSpec, SynthSpec
from trainers.errors import FrostError
from trainers.synth.dataset import ensure_synth_dataset, write_detection_dataset
from trainers.synth.kinds import catalogue, detection_classes
from trainers.synth.render import render_crop, render_scene

SMALL = SynthSpec(train_images=24, val_images=8, classes=6)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The default dataset, generated once for the module."""
    root = tmp_path_factory.mktemp("default")
    summary = write_detection_dataset(root, SynthSpec())
    return root, summary


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_detection_dataset(tmp_path / "a", SMALL)
    write_detection_dataset(tmp_path / "b", SMALL)
    write_detection_dataset(tmp_path / "c", SMALL.model_copy(update={"seed": 1}))
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert "annotations/train.json" in a and "images/train/000001.png" in a and "images/val/000008.png" in a
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert a["images/train/000001.png"] != c["images/train/000001.png"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_pycocotools_loads_and_boxes_lie_inside_images(default_data, split):
    root, _ = default_data
    coco = COCO(str(root / "annotations" / f"{split}.json"))
    assert sorted(coco.getCatIds()) == list(range(1, 17))
    assert len(coco.getImgIds()) == (320 if split == "train" else 96)
    for image in coco.loadImgs(coco.getImgIds()):
        assert (root / "images" / image["file_name"]).is_file()
        assert image["file_name"].startswith(f"{split}/")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert 1 <= len(anns) <= 4
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and ann["area"] == w * h and ann["iscrowd"] == 0
            assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
            # objects span roughly 10–70 px of a 128 px image (shape aspect and rotation widen that a bit)
            assert 5 <= max(w, h) <= 85


def test_default_train_split_is_long_tailed_and_val_covers_every_class(default_data):
    root, summary = default_data
    train = json.loads((root / "annotations" / "train.json").read_text())
    images_per_class = {c["id"]: set() for c in train["categories"]}
    for ann in train["annotations"]:
        images_per_class[ann["category_id"]].add(ann["image_id"])
    counts = [len(v) for v in images_per_class.values()]
    rare = sum(1 <= n <= 10 for n in counts)
    common = sum(10 < n <= 100 for n in counts)
    frequent = sum(n > 100 for n in counts)
    assert min(rare, common, frequent) >= 1, counts
    assert summary["buckets"] == {"rare": rare, "common": common, "frequent": frequent}
    assert sorted(summary["train_images_per_class"].values()) == sorted(counts)
    assert {c["frequency"] for c in train["categories"]} == {"r", "c", "f"}

    val = json.loads((root / "annotations" / "val.json").read_text())
    val_counts = {c["id"]: 0 for c in val["categories"]}
    for ann in val["annotations"]:
        val_counts[ann["category_id"]] += 1
    assert min(val_counts.values()) >= 5, val_counts
    assert val["categories"] == train["categories"]


def test_catalogue_opens_with_lookalike_pairs_and_covers_the_product():
    kinds = catalogue()
    assert len(kinds) == len(set(kinds)) == 640
    for first, second in zip(kinds[:64:2], kinds[1:64:2]):
        differing = [f for f in ("shape", "texture", "colour") if getattr(first, f) != getattr(second, f)]
        assert len(differing) == 1, (first, second)
    assert len({k.shape for k in detection_classes(16)}) >= 6
    assert len({k.texture for k in detection_classes(16)}) >= 6
    assert len({k.colour for k in detection_classes(16)}) >= 6


def test_cli_writes_dataset_and_rejects_bad_overrides(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--set", "train_images=6", "--set", "val_images=3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"train": 6, "val": 3}
    assert (out / "annotations" / "train.json").is_file() and (out / "annotations" / "val.json").is_file()
    assert len(list((out / "images" / "train").glob("*.png"))) == 6

    assert main(["data", "synth", str(tmp_path / "bad"), "--set", "classes=1"]) == 2
    assert "synth.classes" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "bad"), "--set", "colours=3"]) == 2
    assert "synth.colours: unknown field" in capsys.readouterr().err


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FROST_HOME", str(tmp_path / "home"))
    data = DataSpec(synth=SMALL)
    root = ensure_synth_dataset(data)
    assert root == data.resolved_root() and root.parent == tmp_path / "home" / "data"
    assert "generating" in capsys.readouterr().err
    stamp = (root / "annotations" / "train.json").stat().st_mtime_ns
    assert ensure_synth_dataset(data) == root
    assert capsys.readouterr().err == ""
    assert (root / "annotations" / "train.json").stat().st_mtime_ns == stamp
    assert [p.name for p in root.parent.iterdir() if ".tmp-" in p.name] == []


def test_ensure_refuses_a_foreign_root(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FrostError, match="data.root"):
        ensure_synth_dataset(DataSpec(root=str(tmp_path / "mine"), synth=SMALL))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.integration
def test_concurrent_callers_generate_once(tmp_path):
    code = (
        "from trainers.config import DataSpec, SynthSpec; from trainers.synth.dataset import ensure_synth_dataset; "
        "print(ensure_synth_dataset(DataSpec(synth=SynthSpec(train_images=40, val_images=8, classes=6))))"
    )
    env = {**os.environ, "FROST_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], results
    roots = {out.strip() for out, _ in results}
    assert len(roots) == 1
    assert sum("generating" in err for _, err in results) == 1
    assert len(list((Path(roots.pop()) / "images" / "train").glob("*.png"))) == 40


def test_objects_fit_even_in_small_images():
    kinds = catalogue()
    for i in range(300):
        rng = np.random.default_rng(i)
        assert render_crop(rng, kinds[i % len(kinds)], 32).shape == (32, 32, 3)
        _, boxes = render_scene(rng, 32, list(kinds[:4]), [kinds[100]])
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32


def test_lvis_format_adds_true_verification_lists_to_the_same_images(tmp_path, capsys):
    args = [
        "--set",
        "train_images=12",
        "--set",
        "val_images=6",
        "--set",
        "classes=6",
        "--set",
        "image_size=64",
    ]
    assert main(["data", "synth", str(tmp_path / "coco"), *args]) == 0
    assert main(["data", "synth", str(tmp_path / "lvis"), "--format", "lvis", *args]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "lvis" and summary["spec"]["format"] == "lvis"
    coco_tree, lvis_tree = tree(tmp_path / "coco"), tree(tmp_path / "lvis")
    assert {k: v for k, v in coco_tree.items() if k.startswith("images/")} == {
        k: v for k, v in lvis_tree.items() if k.startswith("images/")
    }
    counts = {"negative": 0, "unverified": 0, "not_exhaustive": 0}
    for split in ("train", "val"):
        coco = json.loads((tmp_path / "coco" / "annotations" / f"{split}.json").read_text())
        lvis = json.loads((tmp_path / "lvis" / "annotations" / f"{split}.json").read_text())
        assert lvis["annotations"] == coco["annotations"] and lvis["categories"] == coco["categories"]
        present: dict[int, set[int]] = {image["id"]: set() for image in lvis["images"]}
        for ann in lvis["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        for image, plain in zip(lvis["images"], coco["images"]):
            assert {k: v for k, v in image.items() if k in plain} == plain
            negative, not_exhaustive = (
                set(image["neg_category_ids"]),
                set(image["not_exhaustive_category_ids"]),
            )
            assert not negative & present[image["id"]] and not_exhaustive <= present[image["id"]]
            counts["negative"] += len(negative)
            counts["unverified"] += 6 - len(present[image["id"]]) - len(negative)
            counts["not_exhaustive"] += len(not_exhaustive)
    assert min(counts.values()) > 0, counts  # every kind of (image, category) pair occurs


def test_cache_identity_of_the_coco_format_is_unchanged():
    # The folder name hashes the generator settings; `format` joined them later and is left out for COCO,
    # so data sets cached before it are reused (this is the name the default had then).
    assert DataSpec().resolved_root().name == "synth-6e766c1e2d"
    lvis = DataSpec(synth=SynthSpec(format="lvis"))
    assert lvis.resolved_root() != DataSpec().resolved_root() and lvis.synth.identity()["format"] == "lvis"
    assert "format" not in SynthSpec().identity()
