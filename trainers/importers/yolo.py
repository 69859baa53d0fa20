"""YOLO (Darknet / Ultralytics): one `labels/<stem>.txt` per image, lines `class cx cy w h`, normalised to 0..1.

Layouts, in the order they are looked for:
- `data.yaml` (or `dataset.yaml`): `path:` (optional root), `train:` / `val:` / `test:` naming image folders
  (one or a list) relative to it, `names:` as a list or a {id: name} mapping. Each image folder's labels are
  the same path with its last `images` part replaced by `labels`, as Ultralytics does.
- `images/<split>/` beside `labels/<split>/` for splits train, val, test.
- `images/` beside `labels/` (no split: the import splits).
Class names come from data.yaml, else `classes.txt` (in SRC or SRC/labels), one a line; class k is category
k + 1. `val` + `test` become val unless `--val-split` names one. An image without a label file has no
objects (YOLO's negatives); a label file without its image is an invalid record. Boxes are made absolute with
the size read from the image file's header.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainers.data import box_problem
from trainers.errors import FrostError, shown
from trainers.importers.model import Img, Obj, Problem, Source, header_size
from trainers.safe_yaml import read_yaml

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_LABEL_BYTES = 4 << 20


def _names_from(value: Any, where: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(n, (str, int)) for n in value):
        return [str(n) for n in value]
    if isinstance(value, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        if sorted(value) != list(range(len(value))):
            raise FrostError(
                f"{where}: names: class ids must be 0..{len(value) - 1}, got {shown(sorted(value))}"
            )
        return [str(value[k]) for k in range(len(value))]
    raise FrostError(f"{where}: names: expected a list or an {{id: name}} mapping, got {shown(value)}")


def _class_names(root: Path, yaml_names: Any, yaml_path: Path | None) -> list[str]:
    if yaml_names is not None:
        names = _names_from(yaml_names, str(yaml_path))
    else:
        found = [p for p in (root / "classes.txt", root / "labels" / "classes.txt") if p.is_file()]
        if not found:
            raise FrostError(f"{root}: no class names: give data.yaml with names: or classes.txt")
        names = [line.strip() for line in found[0].read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise FrostError(f"{root}: the class name list is empty")
    if len(set(names)) != len(names):
        raise FrostError(f"{root}: class names appear twice: {shown(names)}")
    return names


def _labels_for(images: Path) -> Path:
    parts = list(images.parts)
    if "images" in parts:
        at = len(parts) - 1 - parts[::-1].index("images")
        return Path(*parts[:at], "labels", *parts[at + 1 :])
    return images.parent / "labels"


def _yaml_layout(root: Path, yaml_path: Path) -> tuple[dict[str, list[Path]], Any]:
    raw = read_yaml(yaml_path)
    base = Path(str(raw.get("path") or "."))
    base = base if base.is_absolute() else (yaml_path.parent / base)
    folders: dict[str, list[Path]] = {}
    for split in SPLITS:
        value = raw.get(split)
        if value is None:
            continue
        for entry in value if isinstance(value, list) else [value]:
            if not isinstance(entry, str):
                raise FrostError(f"{yaml_path}: {split}: expected a folder path, got {shown(entry)}")
            folder = base / entry
            if not folder.is_dir():
                raise FrostError(f"{yaml_path}: {split}: {folder} is not a folder of images")
            folders.setdefault(split, []).append(folder)
    if "train" not in folders:
        raise FrostError(f"{yaml_path}: no train: folder")
    return folders, raw.get("names")


def _layout(root: Path) -> tuple[dict[str | None, list[Path]], Any, Path | None]:
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            folders, names = _yaml_layout(root, root / name)
            found: dict[str | None, list[Path]] = {split: paths for split, paths in folders.items()}
            return found, names, root / name
    split_folders: dict[str | None, list[Path]] = {
        s: [root / "images" / s] for s in SPLITS if (root / "images" / s).is_dir()
    }
    if split_folders:
        return split_folders, None, None
    if (root / "images").is_dir():
        return {None: [root / "images"]}, None, None
    raise FrostError(f"{root}: no data.yaml, images/<split>/ or images/ folder; not a YOLO dataset")


def _box(numbers: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    cx, cy, w, h = numbers
    return ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)


def _read_labels(path: Path, image: Img, classes: int, problems: list[Problem]) -> None:
    if path.stat().st_size > MAX_LABEL_BYTES:
        problems.append(Problem(path, "file", f"larger than {MAX_LABEL_BYTES:,} bytes", drops_image=True))
        return
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        record = f"line {number}"
        if len(fields) != 5:
            problems.append(Problem(path, record, f"expected 5 numbers (class cx cy w h), got {len(fields)}"))
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(Problem(path, record, f"not numbers: {shown(line.strip(), 80)}"))
            continue
        if not values[0].is_integer() or not 0 <= values[0] < classes:
            problems.append(Problem(path, record, f"unknown class id {fields[0]} (classes 0..{classes - 1})"))
            continue
        if not all(math.isfinite(v) for v in values[1:]):
            problems.append(Problem(path, record, "a coordinate is not a finite number"))
            continue
        bbox = _box(values[1:], image.width, image.height)
        why = box_problem(list(bbox), image.width, image.height)
        if why is not None:
            problems.append(Problem(path, record, why))
            continue
        image.objects.append(Obj(int(values[0]) + 1, bbox))


def _read_folder(
    images: Path, prefix: str, split: str | None, classes: int, problems: list[Problem]
) -> list[Img]:
    labels = _labels_for(images)
    files = {
        p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }
    label_files = {p.stem: p for p in sorted(labels.glob("*.txt"))} if labels.is_dir() else {}
    label_files.pop("classes", None)
    read = []
    for stem in sorted(set(files) | set(label_files)):
        if stem not in files:
            problems.append(
                Problem(label_files[stem], "image", f"missing image {images}/{stem}.*", drops_image=True)
            )
            continue
        size = header_size(files[stem])
        if isinstance(size, str):
            problems.append(Problem(files[stem], "image", size, drops_image=True))
            continue
        image = Img(files[stem], f"{prefix}{files[stem].name}", size[0], size[1], split=split)
        if stem in label_files:
            _read_labels(label_files[stem], image, classes, problems)
        read.append(image)
    return read


def read_yolo(root: Path, val_split: str | None = None) -> Source:
    layout, yaml_names, yaml_path = _layout(root)
    names = _class_names(root, yaml_names, yaml_path)
    if val_split is not None and val_split not in layout:
        raise FrostError(
            f"--val-split: {root} has no {val_split} split (splits: {', '.join(map(str, layout))})"
        )
    val = {val_split} if val_split else {"val", "test"}
    problems: list[Problem] = []
    images: list[Img] = []
    many = sum(len(folders) for folders in layout.values()) > 1
    for split, folders in layout.items():
        to = None if split is None else ("val" if split in val else "train")
        for i, folder in enumerate(folders):
            prefix = f"{split}{i if len(folders) > 1 else ''}/" if many else ""
            images += _read_folder(folder, prefix, to, len(names), problems)
    categories = {k + 1: {"id": k + 1, "name": name} for k, name in enumerate(names)}
    return Source(images, categories, problems)
