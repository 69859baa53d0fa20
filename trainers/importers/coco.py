"""COCO (or LVIS) JSON checked and normalised with frost's own rules, so a file is known good before a sweep.

SRC is a folder with `annotations/*.json` (frost's `train.json` / `val.json`, or COCO's
`instances_train2017.json`) and the images in `images/`, `images/<tag>/` or `<tag>/` (tag: `train2017`, `val`,
...), or one annotation file (its images in `images/` beside its folder, or beside it). A file whose name holds
`val` or `test` is val, one holding `train` is train; a file that is neither is split by the import.

The checks are trainers/data.py's: `coco_type_problems` (types, ids, references; a file with such problems is
refused whole, as frost's loader would, since its records cannot be trusted one by one), then per annotation
`box_problem` and a known category, and per image a readable file whose header size is the annotated one.
Category ids, names, LVIS `frequency` and the per-image LVIS lists are kept; image and annotation ids are
renumbered 1..N by the writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.data import box_problem, coco_type_problems, leaves_folder
from trainers.errors import FrostError
from trainers.files import read_json
from trainers.importers.model import Img, Obj, Problem, Source, header_size

LVIS_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
MAX_JSON_BYTES = 2 << 30


def _split_of(path: Path) -> str | None:
    stem = path.stem.lower()
    if "val" in stem or "test" in stem:
        return "val"
    return "train" if "train" in stem else None


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted((src / "annotations").glob("*.json")) if (src / "annotations").is_dir() else []
    files = files or sorted(src.glob("*.json"))
    if not files:
        raise FrostError(f"{src}: no annotations/*.json; give a COCO dataset folder or an annotation file")
    return files


def _image_folders(src: Path, ann_file: Path) -> list[Path]:
    base = src if src.is_dir() else ann_file.parent.parent
    tag = ann_file.stem.removeprefix("instances_").removeprefix("lvis_v1_")
    candidates = [base / "images" / tag, base / tag, base / "images", ann_file.parent]
    return [c for c in candidates if c.is_dir()]


def _read_file(src: Path, path: Path, categories: dict[int, dict], problems: list[Problem]) -> list[Img]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise FrostError(f"{path}: larger than {MAX_JSON_BYTES:,} bytes")
    raw = read_json(path, "annotations")
    if not isinstance(raw, dict) or any(
        not isinstance(raw.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise FrostError(f"{path}: not COCO format (an object with images, annotations and categories lists)")
    type_problems = coco_type_problems(raw)
    if type_problems:
        problems += [Problem(path, "records", why, drops_image=True) for why in type_problems]
        return []
    for category in raw["categories"]:
        known = categories.setdefault(category["id"], dict(category))
        if known.get("name") != category.get("name"):
            raise FrostError(f"{path}: category id {category['id']} is {known.get('name')!r} in another file")
    folders = _image_folders(src, path)
    split = _split_of(path)
    images: dict[int, Img] = {}
    for index, info in enumerate(raw["images"]):
        record = f"images[{index}] ({info['file_name']})"
        found = next((f / info["file_name"] for f in folders if (f / info["file_name"]).is_file()), None)
        if found is None:
            where = " or ".join(str(f) for f in folders) or f"{src}/images"
            problems.append(Problem(path, record, f"missing image (looked in {where})", drops_image=True))
            continue
        size = header_size(found)
        if isinstance(size, str):
            problems.append(Problem(path, record, size, drops_image=True))
            continue
        if (round(info["width"]), round(info["height"])) != size:
            why = f"annotated {info['width']}x{info['height']} but the file is {size[0]}x{size[1]}"
            problems.append(Problem(path, record, why, drops_image=True))
            continue
        extra = {k: info[k] for k in LVIS_IMAGE_KEYS if k in info}
        name = info["file_name"] if not leaves_folder(info["file_name"]) else found.name
        images[info["id"]] = Img(found, name, size[0], size[1], split=split, extra=extra)
    for index, ann in enumerate(raw["annotations"]):
        image = images.get(ann["image_id"])
        if image is None:  # its image was invalid: already named once
            continue
        record = f"annotations[{index}] (id {ann['id']}, image {image.file_name})"
        if ann["category_id"] not in categories:
            problems.append(Problem(path, record, f"unknown category id {ann['category_id']}"))
            continue
        bad = box_problem(ann.get("bbox"), image.width, image.height)
        if bad is not None:
            problems.append(Problem(path, record, bad))
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        kept: dict[str, Any] = {k: v for k, v in ann.items() if k == "segmentation"}
        image.objects.append(Obj(ann["category_id"], (x, y, w, h), 1 if ann.get("iscrowd") else 0, kept))
    return list(images.values())


def read_coco(src: Path, val_split: str | None = None) -> Source:
    files = _files(src)
    if val_split is not None:
        named = [f for f in files if val_split in f.stem]
        if not named:
            raise FrostError(f"--val-split: no annotation file in {src} has {val_split!r} in its name")
    categories: dict[int, dict] = {}
    problems: list[Problem] = []
    images: list[Img] = []
    for path in files:
        read = _read_file(src, path, categories, problems)
        if val_split is not None:
            for image in read:
                image.split = "val" if val_split in path.stem else "train"
        images += read
    if not categories and not problems:
        raise FrostError(f"{src}: no categories")
    return Source(images, categories, problems)
