"""Pascal VOC: `Annotations/*.xml`, `JPEGImages/`, and `ImageSets/Main/{train,val,test}.txt` when present.

- Splits: without lists, the import splits (trainers/importers/split.py). With them, val is `val` + `test`
  (or only the list `--val-split` names) and train every other list; only listed images are imported.
- Boxes: VOC's `bndbox` gives 1-based, inclusive pixel indices, so xmin=1, xmax=10 covers 10 pixels: COCO's
  [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1].
- `difficult` objects are kept as `iscrowd: 1` (ignore regions: COCOeval neither rewards nor punishes a
  detection on them, as VOC's protocol does, and frost's trainer leaves crowd boxes out of its targets) with
  `difficult: 1`; `truncated` is kept as a field of its own.
- The image's size comes from `<size>` and must match the file's header (a mismatch is an invalid record:
  the boxes were drawn on another image); a missing or zero `<size>` takes the header's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from trainers.data import box_problem
from trainers.errors import FrostError, shown
from trainers.importers.model import Img, Obj, Problem, Source, header_size
from trainers.importers.safe_xml import parse_xml

VOC_LISTS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def _text(element: ET.Element | None, tag: str) -> str | None:
    found = element.find(tag) if element is not None else None
    return found.text.strip() if found is not None and found.text is not None else None


def _number(element: ET.Element | None, tag: str) -> float:
    value = _text(element, tag)
    if value is None:
        raise ValueError(f"no <{tag}>")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"<{tag}> is not a number: {shown(value, 40)}") from None


def _flag(element: ET.Element, tag: str) -> int:
    value = _text(element, tag)
    return 1 if value not in (None, "", "0") else 0


def _splits(root: Path, val_split: str | None) -> dict[str, str] | None:
    """Image stem -> "train" / "val" from ImageSets/Main, or None when the source has no lists."""
    folder = root / "ImageSets" / "Main"
    lists = {name: folder / f"{name}.txt" for name in VOC_LISTS if (folder / f"{name}.txt").is_file()}
    if val_split is not None and val_split not in lists:
        have = ", ".join(sorted(lists)) or "none"
        raise FrostError(f"--val-split: {folder}/{val_split}.txt not found (lists: {have})")
    if not lists:
        return None
    val_lists = {val_split} if val_split else {"val", "test"} & set(lists)
    if not val_lists:
        raise FrostError(f"{folder}: a train list but no val or test list; remove it or add val.txt")
    split: dict[str, str] = {}
    for name, path in lists.items():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stem = line.split()[0] if line.split() else ""
            if stem and split.get(stem) != "val":  # listed in val and train: val wins, never in both
                split[stem] = "val" if name in val_lists else "train"
    return split


def _image_path(root: Path, xml: ET.Element, stem: str) -> Path:
    name = _text(xml, "filename")
    if name and Path(name).name == name and (root / "JPEGImages" / name).is_file():
        return root / "JPEGImages" / name
    for suffix in IMAGE_SUFFIXES:
        if (root / "JPEGImages" / f"{stem}{suffix}").is_file():
            return root / "JPEGImages" / f"{stem}{suffix}"
    return root / "JPEGImages" / (name if name and Path(name).name == name else f"{stem}.jpg")


def _read_one(root: Path, path: Path, names: dict[str, int], problems: list[Problem]) -> Img | None:
    try:
        xml = parse_xml(path)
    except (ValueError, OSError) as exc:
        problems.append(Problem(path, "file", str(exc), drops_image=True))
        return None
    image_path = _image_path(root, xml, path.stem)
    size = header_size(image_path)
    if isinstance(size, str):
        problems.append(Problem(path, "image", size, drops_image=True))
        return None
    width, height = size
    declared = xml.find("size")
    try:
        said = (int(_number(declared, "width")), int(_number(declared, "height")))
    except ValueError:
        said = (0, 0)
    if said != (0, 0) and said != (width, height):
        why = f"<size> says {said[0]}x{said[1]} but {image_path.name} is {width}x{height}"
        problems.append(Problem(path, "size", why, drops_image=True))
        return None
    image = Img(image_path, image_path.name, width, height)
    for index, element in enumerate(xml.iter("object")):
        record = f"object {index}"
        name = _text(element, "name")
        if not name:
            problems.append(Problem(path, record, "no <name>"))
            continue
        box = element.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (_number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            problems.append(Problem(path, f"{record} ({name})", f"bndbox: {exc}"))
            continue
        bbox = (xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1)
        bad = box_problem(list(bbox), width, height)
        if bad is not None:
            problems.append(Problem(path, f"{record} ({name})", bad))
            continue
        difficult, truncated = _flag(element, "difficult"), _flag(element, "truncated")
        extra = {"truncated": truncated, **({"difficult": 1} if difficult else {})}
        image.objects.append(Obj(names.setdefault(name, len(names) + 1), bbox, difficult, extra))
    return image


def read_voc(root: Path, val_split: str | None = None) -> Source:
    folder = root / "Annotations"
    if not folder.is_dir():
        raise FrostError(
            f"{root}: no Annotations/ folder; a VOC dataset has Annotations/*.xml and JPEGImages/"
        )
    split = _splits(root, val_split)
    files = sorted(folder.glob("*.xml"))
    problems: list[Problem] = []
    if split is not None:
        have = {path.stem for path in files}
        for stem in sorted(set(split) - have):
            why = f"listed in ImageSets/Main but {folder.name}/{stem}.xml is missing"
            problems.append(Problem(root / "ImageSets" / "Main", stem, why, drops_image=True))
        files = [path for path in files if path.stem in split]
    if not files:
        raise FrostError(
            f"{folder}: no annotation (*.xml) files{' listed in ImageSets/Main' if split else ''}"
        )
    names: dict[str, int] = {}
    images = []
    for path in files:
        image = _read_one(root, path, names, problems)
        if image is not None:
            image.split = split[path.stem] if split is not None else None
            images.append(image)
    return Source(images, _sorted_categories(images, names), problems)


def _sorted_categories(images: list[Img], names: dict[str, int]) -> dict[int, dict]:
    """Category ids 1..K in name order (stable across runs whatever the files' order), objects renumbered."""
    order = {name: new for new, name in enumerate(sorted(names), start=1)}
    renumber = {old: order[name] for name, old in names.items()}
    for image in images:
        for obj in image.objects:
            obj.category_id = renumber[obj.category_id]
    return {new: {"id": new, "name": name} for name, new in order.items()}
