"""`frost data import` (VOC, YOLO, COCO -> a frost dataset) and `frost data stats`, on tiny trees written here.

Every bad record is exit 2 naming its file and record, OUT untouched; `--drop-invalid` imports the rest.
The two `frost train` runs are the contract: what the import writes, frost trains on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main

SIZE = 64
CLASSES = ("cat", "dog", "fox")


def _image(path: Path, size: tuple[int, int] = (SIZE, SIZE), shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (30 + shade * 20 % 200, 60, 90))
    for x in range(size[0] // 4, size[0] // 2):  # a square the detector can see
        for y in range(size[1] // 4, size[1] // 2):
            image.putpixel((x, y), (250, 250, 250))
    image.save(path)


def _objects(i: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Image i's objects as (class, VOC xmin, ymin, xmax, ymax); every class in >= 2 images."""
    return [(CLASSES[i % 3], (16, 16, 32, 32))] + (
        [(CLASSES[(i + 1) % 3], (36, 36, 60, 60))] if i % 2 else []
    )


def _voc_xml(name: str, objects, size=(SIZE, SIZE), difficult: int | None = None) -> str:
    parts = []
    for k, (cls, (x1, y1, x2, y2)) in enumerate(objects):
        flag = "1" if k == difficult else "0"
        parts.append(
            f"<object><name>{cls}</name><truncated>0</truncated><difficult>{flag}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return (
        f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{''.join(parts)}</annotation>"
    )


def make_voc(root: Path, n: int = 8, lists: bool = True) -> Path:
    for i in range(n):
        _image(root / "JPEGImages" / f"im{i}.jpg", shade=i)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"im{i}.xml").write_text(_voc_xml(f"im{i}", _objects(i)))
    if lists:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"im{i}\n" for i in range(n - 3)))
        (root / "ImageSets" / "Main" / "val.txt").write_text("".join(f"im{i}\n" for i in range(n - 3, n)))
    return root


def _yolo_line(cls: int, box: tuple[float, float, float, float], w: int = SIZE, h: int = SIZE) -> str:
    x, y, bw, bh = box  # absolute xywh
    return f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n"


def make_yolo(root: Path, n: int = 8, splits: bool = True, yaml: bool = True) -> Path:
    for i in range(n):
        split = ("train" if i < n - 3 else "val") if splits else ""
        _image(root / "images" / split / f"im{i}.png", shade=i)
        lines = [
            _yolo_line(CLASSES.index(cls), (x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1))
            for cls, (x1, y1, x2, y2) in _objects(i)
        ]
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"im{i}.txt").write_text("".join(lines))
    if yaml and splits:
        (root / "data.yaml").write_text(
            "train: images/train\nval: images/val\nnames: {0: cat, 1: dog, 2: fox}\n"
        )
    else:
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"{split}.json").read_text())


# ------------------------------------------------------------------------------------------------ VOC
def test_voc_imports_splits_lists_and_keeps_difficult_as_ignored(tmp_path, capsys):
    src = make_voc(tmp_path / "voc")
    (src / "Annotations" / "im0.xml").write_text(_voc_xml("im0", _objects(1), difficult=1))
    code, out, err = run(capsys, "import", str(src), str(tmp_path / "out"), "--format", "voc", "--json")
    assert code == 0, err
    train, val = _load(tmp_path / "out", "train"), _load(tmp_path / "out", "val")
    assert len(train["images"]) == 5 and len(val["images"]) == 3
    assert [c["name"] for c in train["categories"]] == list(CLASSES)
    im0 = next(i for i in train["images"] if i["file_name"] == "im0.jpg")
    anns = [a for a in train["annotations"] if a["image_id"] == im0["id"]]
    assert sorted(a["iscrowd"] for a in anns) == [0, 1]
    assert next(a for a in anns if a["iscrowd"])["difficult"] == 1 and all("truncated" in a for a in anns)
    assert anns[0]["bbox"] == [15.0, 15.0, 17.0, 17.0]  # VOC's 1-based inclusive pixels
    assert (tmp_path / "out" / "images" / "im0.jpg").is_file()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["splits"]["train"]["ignored"] == 1 and summary["buckets"]["rare"] == 3


def test_a_listed_voc_image_without_its_annotation_is_named(tmp_path, capsys):
    src = make_voc(tmp_path / "voc")
    (src / "Annotations" / "im7.xml").unlink()
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "out"), "--format", "voc")
    assert code == 2 and "im7: listed in ImageSets/Main but Annotations/im7.xml is missing" in err


def test_voc_val_split_names_the_list_that_is_val(tmp_path, capsys):
    src = make_voc(tmp_path / "voc")
    (src / "ImageSets" / "Main" / "test.txt").write_text("im0\n")
    args = ["import", str(src), str(tmp_path / "o1"), "--format", "voc"]
    assert run(capsys, *args)[0] == 0
    assert len(_load(tmp_path / "o1", "val")["images"]) == 4  # val + test
    assert run(capsys, *args[:2], str(tmp_path / "o2"), *args[3:], "--val-split", "test")[0] == 0
    assert [i["file_name"] for i in _load(tmp_path / "o2", "val")["images"]] == ["im0.jpg"]


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("malformed", ["im2.xml", "malformed XML"]),
        ("entity", ["im2.xml", "DOCTYPE"]),
        ("outside", ["im2.xml", "object 0 (dog)", "outside the 64x64 image"]),
        ("missing-image", ["im2.xml", "missing image"]),
        ("non-positive", ["im2.xml", "object 0 (dog)", "zero or negative area"]),
        ("size-mismatch", ["im2.xml", "<size> says 80x64"]),
    ],
)
def test_a_bad_voc_record_is_named_and_drop_invalid_imports_the_rest(tmp_path, capsys, case, needles):
    src = make_voc(tmp_path / "voc")
    xml = src / "Annotations" / "im2.xml"
    if case == "malformed":
        xml.write_text("<annotation><size>")
    elif case == "entity":
        xml.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotation>&x;</annotation>')
    elif case == "outside":
        xml.write_text(_voc_xml("im2", [("dog", (40, 40, 90, 60))]))
    elif case == "missing-image":
        (src / "JPEGImages" / "im2.jpg").unlink()
    elif case == "non-positive":
        xml.write_text(_voc_xml("im2", [("dog", (40, 40, 30, 60))]))
    else:
        xml.write_text(_voc_xml("im2", _objects(2), size=(80, 64)))
    out = tmp_path / "out"
    out.mkdir()  # an empty OUT is allowed, and left as it was on failure
    code, _, err = run(capsys, "import", str(src), str(out), "--format", "voc")
    assert code == 2
    for needle in needles:
        assert needle in err, err
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out", "voc"]
    code, _, err = run(capsys, "import", str(src), str(out), "--format", "voc", "--drop-invalid")
    assert code == 0, err
    assert "dropped 1 invalid record(s)" in err
    images = _load(out, "train")["images"] + _load(out, "val")["images"]
    assert len(images) == (8 if case in ("outside", "non-positive") else 7)


# ----------------------------------------------------------------------------------------------- YOLO
@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ("0 0.5 0.5 0.2\n", ["im1.txt", "line 2", "expected 5 numbers", "got 4"]),
        ("7 0.5 0.5 0.2 0.2\n", ["im1.txt", "line 2", "unknown class id 7"]),
        ("1 0.9 0.5 0.5 0.2\n", ["im1.txt", "line 2", "outside the 64x64 image"]),
        ("1 0.5 0.5 0 0.2\n", ["im1.txt", "line 2", "zero or negative area"]),
    ],
)
def test_a_bad_yolo_line_is_named_and_drop_invalid_imports_the_rest(tmp_path, capsys, line, needles):
    src = make_yolo(tmp_path / "yolo")
    label = src / "labels" / "train" / "im1.txt"
    label.write_text(label.read_text().splitlines(keepends=True)[0] + line)
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "out"), "--format", "yolo")
    assert code == 2 and not (tmp_path / "out").exists()
    for needle in needles:
        assert needle in err, err
    code, _, err = run(
        capsys, "import", str(src), str(tmp_path / "out"), "--format", "yolo", "--drop-invalid"
    )
    assert code == 0 and "dropped 1" in err
    train = _load(tmp_path / "out", "train")
    assert len(train["annotations"]) == 6  # 7 boxes in train, im1's second replaced by the bad line


def test_a_yolo_label_without_its_image_is_named(tmp_path, capsys):
    src = make_yolo(tmp_path / "yolo", yaml=False)
    (src / "images" / "val" / "im6.png").unlink()
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "out"), "--format", "yolo")
    assert code == 2 and "im6.txt: image: missing image" in err


def test_coco_to_yolo_round_trip_keeps_boxes_within_a_pixel(tmp_path, capsys):
    """A COCO set with odd sizes and fractional boxes, written out as YOLO here, imported back."""
    boxes = {
        0: [(0, (3.5, 4.25, 20.0, 11.75))],
        1: [(1, (10.0, 0.0, 50.0, 30.5)), (2, (0.0, 20.0, 7.5, 9.0))],
    }
    sizes = {0: (64, 48), 1: (60, 40)}
    src = tmp_path / "yolo"
    for i, objects in boxes.items():
        w, h = sizes[i]
        _image(src / "images" / f"im{i}.jpg", size=(w, h))
        (src / "labels").mkdir(parents=True, exist_ok=True)
        (src / "labels" / f"im{i}.txt").write_text("".join(_yolo_line(c, b, w, h) for c, b in objects))
    (src / "classes.txt").write_text("a\nb\nc\n")
    code, _, err = run(
        capsys, "import", str(src), str(tmp_path / "out"), "--format", "yolo", "--val-fraction", "0.5"
    )
    assert code == 0, err
    out = tmp_path / "out"
    merged = [_load(out, s) for s in ("train", "val")]
    by_name = {im["file_name"]: im for d in merged for im in d["images"]}
    for i, objects in boxes.items():
        image = by_name[f"im{i}.jpg"]
        assert (image["width"], image["height"]) == sizes[i]
        got = sorted(
            (a["category_id"] - 1, a["bbox"])
            for d in merged
            for a in d["annotations"]
            if a["image_id"] == image["id"]
        )
        assert [c for c, _ in got] == [c for c, _ in sorted(objects)]
        for (_, bbox), (_, want) in zip(got, sorted(objects)):
            assert all(abs(g - w) < 1.0 for g, w in zip(bbox, want)), (bbox, want)


# ------------------------------------------------------------------------------------------ splitting
def test_the_split_puts_every_class_in_two_or_more_images_in_val(tmp_path, capsys):
    src = tmp_path / "yolo"
    counts = {0: 30, 1: 2, 2: 3, 3: 2, 4: 1}  # class -> images; class 4 has one image, it stays in train
    i = 0
    for cls, n in counts.items():
        for _ in range(n):
            _image(src / "images" / f"im{i}.png", size=(32, 32))
            (src / "labels").mkdir(parents=True, exist_ok=True)
            (src / "labels" / f"im{i}.txt").write_text(f"{cls} 0.5 0.5 0.5 0.5\n")
            i += 1
    (src / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    for seed in ("0", "1", "7"):
        out = tmp_path / f"out{seed}"
        code, _, err = run(
            capsys, "import", str(src), str(out), "--format", "yolo", "--val-fraction", "0.1", "--seed", seed
        )
        assert code == 0, err
        val_classes = {a["category_id"] for a in _load(out, "val")["annotations"]}
        train_classes = {a["category_id"] for a in _load(out, "train")["annotations"]}
        assert val_classes >= {1, 2, 3, 4} and train_classes == {1, 2, 3, 4, 5}
    again = tmp_path / "again"
    assert (
        run(
            capsys, "import", str(src), str(again), "--format", "yolo", "--val-fraction", "0.1", "--seed", "7"
        )[0]
        == 0
    )
    assert _load(again, "val") == _load(tmp_path / "out7", "val")  # a fixed seed, the same split


# -------------------------------------------------------------------------------------- COCO and OUT
def test_coco_is_checked_with_frosts_rules(tmp_path, capsys):
    src = tmp_path / "coco"
    for i in range(3):
        _image(src / "images" / f"im{i}.jpg")
    images = [{"id": i + 1, "file_name": f"im{i}.jpg", "width": SIZE, "height": SIZE} for i in range(3)]
    images.append({"id": 9, "file_name": "gone.jpg", "width": SIZE, "height": SIZE})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [1, 1, 10, 10]},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [1, 1, 10, 100]},
    ]
    raw = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    (src / "annotations").mkdir()
    (src / "annotations" / "train.json").write_text(json.dumps(raw))
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "out"), "--format", "coco")
    assert code == 2
    assert "images[3] (gone.jpg): missing image" in err
    assert "annotations[1] (id 2, image im1.jpg): unknown category id 5" in err
    assert "annotations[2] (id 3, image im2.jpg): bbox" in err and "outside" in err
    code, _, err = run(
        capsys,
        "import",
        str(src),
        str(tmp_path / "out"),
        "--format",
        "coco",
        "--drop-invalid",
        "--val-fraction",
        "0.34",
    )
    assert code == 0 and "dropped 3" in err


def test_an_import_without_val_images_is_refused(tmp_path, capsys):
    src = make_yolo(tmp_path / "yolo", splits=False)
    code, _, err = run(
        capsys, "import", str(src), str(tmp_path / "out"), "--format", "yolo", "--val-fraction", "0"
    )
    assert code == 2 and "no image left for val" in err and not (tmp_path / "out").exists()


def test_a_non_empty_out_is_refused_and_the_listing_is_capped(tmp_path, capsys):
    src = make_yolo(tmp_path / "yolo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "import", str(src), str(out), "--format", "yolo")
    assert code == 2 and "exists and is not empty" in err and (out / "keep.txt").read_text() == "mine"
    (src / "labels" / "train" / "im0.txt").write_text("9 0.5 0.5 0.1 0.1\n" * 60)
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "new"), "--format", "yolo")
    assert code == 2 and "60 invalid record(s)" in err and "... and 10 more" in err
    assert len(err.splitlines()) == 52 and not (tmp_path / "new").exists()


# -------------------------------------------------------------------------------------------- stats
def test_stats_counts_and_buckets_a_hand_made_set(tmp_path, capsys):
    root = tmp_path / "set"
    (root / "annotations").mkdir(parents=True)
    cats = [{"id": 1, "name": "many"}, {"id": 2, "name": "some"}, {"id": 3, "name": "lvis", "frequency": "f"}]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in range(1, 13)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2]} for i in range(1, 13)
    ]  # 12 images
    anns += [
        {"id": 100 + i, "image_id": i, "category_id": 2, "bbox": [0, 0, 2, 2]} for i in (1, 1, 2)
    ]  # 2 images
    anns += [{"id": 200, "image_id": 3, "category_id": 2, "bbox": [0, 0, 2, 2], "iscrowd": 1}]
    (root / "annotations" / "train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    val = {"images": images[:1], "annotations": anns[:1], "categories": cats}
    (root / "annotations" / "val.json").write_text(json.dumps(val))
    code, out, err = run(capsys, "stats", str(root), "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    rows = {row["name"]: row for row in summary["categories"]}
    assert (rows["many"]["train_images"], rows["many"]["train_boxes"], rows["many"]["bucket"]) == (
        12,
        12,
        "common",
    )
    assert (rows["some"]["train_images"], rows["some"]["train_boxes"], rows["some"]["ignored"]) == (2, 3, 1)
    assert rows["some"]["bucket"] == "rare" and rows["lvis"]["bucket"] == "frequent"  # LVIS's frequency wins
    assert rows["many"]["val_images"] == 1 and summary["splits"]["val"] == {
        "images": 1,
        "boxes": 1,
        "ignored": 0,
    }
    assert summary["buckets"] == {"rare": 1, "common": 1, "frequent": 1}
    assert "many" in out and "common" in out
    assert run(capsys, "stats", str(tmp_path))[0] == 2


# -------------------------------------------------------------------------------- frost trains on it
TRAIN = ["train.epochs=1", "backbone.weights=none", "input.image_size=64", "train.batch_size=4",
         "optim.warmup_steps=1", "eval.rare_max=2", "eval.common_max=4"]  # fmt: skip


def _train(capsys, root: Path, out: Path) -> dict:
    args = ["train", "--out", str(out), "--set", "data.source=coco", "--set", f"data.root={root}"]
    for item in TRAIN:
        args += ["--set", item]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt", ["voc", "yolo"])
def test_frost_trains_an_epoch_on_an_imported_set(tmp_path, capsys, fmt):
    src = make_voc(tmp_path / "src") if fmt == "voc" else make_yolo(tmp_path / "src")
    code, _, err = run(capsys, "import", str(src), str(tmp_path / "data"), "--format", fmt)
    assert code == 0, err
    metrics = _train(capsys, tmp_path / "data", tmp_path / "trial")
    assert metrics["epochs"] == 1 and 0 <= metrics["AP"] <= 1


def test_from_outside_exit_2_is_one_line_per_record_and_exit_0_a_dataset(tmp_path):
    src = make_yolo(tmp_path / "yolo")
    with (src / "labels" / "train" / "im1.txt").open("a") as fh:
        fh.write("0 0.5 0.5 0.2\n5 0.5 0.5 0.2 0.2\n")
    frost = [
        sys.executable,
        "-m",
        "service.cli",
        "data",
        "import",
        str(src),
        str(tmp_path / "out"),
        "--format",
        "yolo",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(frost, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[1:] == [
        f"  {src}/labels/train/im1.txt: line 3: expected 5 numbers (class cx cy w h), got 4",
        f"  {src}/labels/train/im1.txt: line 4: unknown class id 5 (classes 0..2)",
    ]
    done = subprocess.run(
        [*frost, "--drop-invalid", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["splits"]["train"]["boxes"] == 7
