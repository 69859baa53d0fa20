"""The built-in long-tail detection data set, in COCO or LVIS format, and its cache under FROST_HOME.

Objects are kinds of the synth generator family (shape x texture x colour, trainers/synth/kinds.py), drawn
on cluttered, textured backgrounds (trainers/synth/render.py). A detector must check all three factors of
an object, with some classes seen in only a handful of training images: data on which classifier
pretraining can matter.

Everything is drawn from numpy generators seeded by (spec.seed, split, image index): the same spec gives
the same JSON and the same PNG bytes. The LVIS format (`synth.format: lvis`) is the COCO data set with the
same images and boxes plus LVIS's per-image verification lists (see `add_federated_fields`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainers.config import DataSpec, SynthSpec
from trainers.errors import FrostError
from trainers.files import file_lock
from trainers.logs import log
from trainers.synth.kinds import catalogue, detection_classes
from trainers.synth.render import render_scene

# Bumped (in config.SynthSpec.version) whenever the generator draws differently: the dataset cache path
# hashes the SynthSpec, so old caches are not reused, and pretraining digests include it too.
GENERATOR_VERSION: int = SynthSpec().version

# LVIS frequency buckets by the number of train images containing a class.
RARE_MAX, COMMON_MAX = 10, 100

# LVIS format: of the categories absent from an image, the share listed as verified absent
# (`neg_category_ids`; the rest are unverified); of those present, the share listed as not exhaustively
# annotated (`not_exhaustive_category_ids`). LVIS v1 val has about 7 negatives per image.
NEGATIVE_SHARE = 0.5
NOT_EXHAUSTIVE_SHARE = 0.25
_SPLIT_CODE = {"train": 1, "val": 2}

# ---------------------------------------------------------------------------------------------------------
# The detection dataset


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def power_law_counts(total: int, classes: int, exponent: float, floor: int) -> np.ndarray:
    """Instances per frequency rank, proportional to rank^-exponent, at least `floor`, summing to `total`
    (largest remainders), so bucket sizes do not depend on sampling luck."""
    weights = np.arange(1, classes + 1, dtype=float) ** -exponent
    floor = min(floor, total // classes)
    spare = total - floor * classes
    share = weights / weights.sum() * spare
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts), kind="stable")[: spare - counts.sum()]] += 1
    return counts + floor


def _split_labels(spec: SynthSpec, split: str) -> list[list[int]]:
    """Class indices of the objects of each image of a split (train: power law; val: balanced)."""
    images = spec.train_images if split == "train" else spec.val_images
    rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split]])
    per_image = rng.integers(1, spec.max_objects + 1, images)
    total = int(per_image.sum())
    if split == "train":
        by_rank = power_law_counts(total, spec.classes, spec.zipf, floor=2)
        counts = np.empty(spec.classes, dtype=int)
        counts[rng.permutation(spec.classes)] = by_rank  # which class is frequent is up to the seed
    else:
        counts = power_law_counts(total, spec.classes, 0.0, floor=0)
    return _deal(rng, counts, per_image)


def _deal(rng: np.random.Generator, counts: np.ndarray, slots: np.ndarray) -> list[list[int]]:
    """Deal counts[c] objects of each class c into images with `slots` objects each, avoiding a second
    object of a class in an image while possible: a class's image count then follows its instance count,
    so the frequency buckets do not depend on sampling luck."""
    free = slots.astype(float).copy()
    contents: list[list[int]] = [[] for _ in slots]
    has = np.zeros((len(slots), len(counts)), dtype=bool)
    for label in np.argsort(-counts, kind="stable"):
        for _ in range(counts[label]):
            weights = free * ~has[:, label]
            if weights.sum() == 0:
                weights = free
            image = int(rng.choice(len(slots), p=weights / weights.sum()))
            free[image] -= 1
            has[image, label] = True
            contents[image].append(int(label))
    return [[labels[i] for i in rng.permutation(len(labels))] for labels in contents]


def _frequency(image_count: int) -> str:
    return "r" if image_count <= RARE_MAX else "c" if image_count <= COMMON_MAX else "f"


def _write_split(
    out_dir: Path, spec: SynthSpec, split: str, categories: list[dict[str, Any]]
) -> dict[str, Any]:
    classes = detection_classes(spec.classes)
    others = catalogue()[spec.classes :]
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, labels in enumerate(_split_labels(spec, split)):
        rng = _split_rng(spec.seed, split, index)
        distractors = [others[i] for i in rng.integers(len(others), size=int(rng.integers(0, 3)))]
        pixels, boxes = render_scene(rng, spec.image_size, [classes[i] for i in labels], distractors)
        file_name = f"{split}/{index + 1:06d}.png"
        Image.fromarray(pixels).save(out_dir / "images" / file_name, format="PNG")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size}
        )
        for label, (x0, y0, x1, y1) in zip(labels, boxes):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[label]["id"],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def _class_counts(coco: dict[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """Per category id: images containing it, and instances."""
    images: dict[int, set[int]] = {c["id"]: set() for c in coco["categories"]}
    instances = dict.fromkeys(images, 0)
    for ann in coco["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    return {k: len(v) for k, v in images.items()}, instances


def write_detection_dataset(out_dir: Path, spec: SynthSpec) -> dict[str, Any]:
    """Write the long-tail data set of `spec` (COCO or LVIS format) into `out_dir` (annotations/, images/,
    summary.json last) and return the summary. Deterministic in `spec`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    categories: list[dict[str, Any]] = [
        {"id": i + 1, "name": kind.name, "supercategory": kind.shape}
        for i, kind in enumerate(detection_classes(spec.classes))
    ]
    train = _write_split(out_dir, spec, "train", categories)
    image_count, instance_count = _class_counts(train)
    for category in categories:  # LVIS-style per-class frequency, from the train split
        category.update(
            image_count=image_count[category["id"]],
            instance_count=instance_count[category["id"]],
            frequency=_frequency(image_count[category["id"]]),
        )
    val = _write_split(out_dir, spec, "val", categories)
    for split, coco in (("train", train), ("val", val)):
        if spec.format == "lvis":
            add_federated_fields(coco, spec.seed, split)
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    summary = _summary(spec, categories, train, val)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}


def add_federated_fields(coco: dict[str, Any], seed: int, split: str) -> None:
    """Give every image LVIS's verification lists, in place: `neg_category_ids`, a random share of the
    categories absent from it, and `not_exhaustive_category_ids`, a random share of those present.

    The images and boxes stay those of the COCO format, so both formats score the same detections. Every
    object of the synth data is annotated, so the lists are true statements about the image; categories
    in neither list are unverified, as most categories of a real LVIS image are. Drawn from a generator of
    its own, so the COCO format's draws are untouched.
    """
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 0, 1])
    category_ids = sorted(int(c["id"]) for c in coco["categories"])
    present: dict[int, set[int]] = defaultdict(set)
    for ann in coco["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    for image in coco["images"]:
        here = present[image["id"]]
        draws = rng.random(len(category_ids))
        image["neg_category_ids"] = [
            c for c, u in zip(category_ids, draws) if c not in here and u < NEGATIVE_SHARE
        ]
        image["not_exhaustive_category_ids"] = [
            c for c, u in zip(category_ids, draws) if c in here and u < NOT_EXHAUSTIVE_SHARE
        ]


def _summary(spec: SynthSpec, categories: list[dict], train: dict, val: dict) -> dict[str, Any]:
    _, val_instances = _class_counts(val)
    buckets = {"rare": 0, "common": 0, "frequent": 0}
    for category in categories:
        buckets[{"r": "rare", "c": "common", "f": "frequent"}[category["frequency"]]] += 1
    return {
        "spec": spec.identity(),
        "format": spec.format,
        "classes": len(categories),
        "images": {"train": len(train["images"]), "val": len(val["images"])},
        "instances": {"train": len(train["annotations"]), "val": len(val["annotations"])},
        "train_images_per_class": {c["name"]: c["image_count"] for c in categories},
        "val_instances_per_class": {c["name"]: val_instances[c["id"]] for c in categories},
        "buckets": buckets,
    }


# ---------------------------------------------------------------------------------------------------------
# The cached default dataset


def _is_dataset_of(root: Path, spec: SynthSpec) -> bool:
    try:
        summary = json.loads((root / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(summary.get("spec") == spec.identity())


def ensure_synth_dataset(data: DataSpec) -> Path:
    """The dataset folder of `data`; for `synth`, generated on first use. Safe for concurrent callers: one
    generates (under a file lock, into a temporary folder renamed into place), the others wait and reuse."""
    root = data.resolved_root()
    if data.source != "synth" or _is_dataset_of(root, data.synth):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):
        if _is_dataset_of(root, data.synth):
            return root
        if root.exists() and any(root.iterdir()):
            raise FrostError(
                f"data.root: {root} exists but is not the synth dataset of data.synth; "
                "remove it or choose another data.root"
            )
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("generating the synth dataset in %s ...", root)
        summary = write_detection_dataset(tmp, data.synth)
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
        log.info(
            "synth dataset ready (%s train / %s val images, buckets %s, %s s)",
            summary["images"]["train"],
            summary["images"]["val"],
            summary["buckets"],
            summary["seconds"],
        )
    return root
