"""COCO-format detection data: annotation JSON + image folder, read with pycocotools and checked up front.

Labels are contiguous (1..K, 0 is background) inside the trainer and mapped back to the dataset's category ids
for evaluation. Crowd boxes are left out of training targets; COCOeval honours them in evaluation.
Randomness (order, flips) is not drawn here: the loop draws it from explicit per-epoch generators.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from trainers.config import DataSpec, SplitSpec
from trainers.errors import FrostError, shown
from trainers.logs import log

# Boxes may overhang the image by this many pixels (rounding in real annotation tools) before they are invalid.
_EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids <-> contiguous training labels 1..K."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def category(self, label: int) -> int:
        return self.category_ids[label - 1]


def load_coco(path: Path) -> COCO:
    """pycocotools COCO from a file, with errors that name the file and nothing printed to stdout."""
    try:
        with path.open(encoding="utf-8") as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise FrostError(f"{path}: cannot read annotations ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FrostError(f"{path}: not UTF-8 text (byte {exc.start}); COCO annotations are JSON") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FrostError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise FrostError(f"{path}: expected a COCO object with images/annotations/categories")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(raw.get(key), list)]
    if missing:
        raise FrostError(f"{path}: not COCO format, missing list(s): {', '.join(missing)}")
    problems = coco_type_problems(raw)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FrostError(f"{path}: " + "; ".join(problems[:5]) + more)
    coco = COCO()
    coco.dataset = raw
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise FrostError(f"{path}: malformed COCO record (missing {exc})") from None
    return coco


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _id_problems(records: list, section: str) -> list[str]:
    problems, seen = [], set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(f"{section}[{i}]: expected an object, got {type(record).__name__}")
        elif not _is_int(record.get("id")):
            problems.append(f"{section}[{i}].id: expected an integer, got {shown(record.get('id'))}")
        elif record["id"] in seen:
            problems.append(f"{section}[{i}].id: {record['id']} appears twice")
        else:
            seen.add(record["id"])
    return problems


def leaves_folder(file_name: str) -> bool:
    """An annotation's `file_name` that would be read from outside its image folder (absolute, or via `..`):
    the loader refuses it, and every other reader of annotations must too."""
    return Path(file_name).is_absolute() or ".." in Path(file_name).parts


def _image_problems(i: int, image: dict) -> list[str]:
    problems = []
    name = image.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(f"images[{i}].file_name: expected a path, got {shown(name)}")
    elif leaves_folder(name):
        problems.append(f"images[{i}].file_name: {shown(name)} leaves the image folder")
    for key in ("width", "height"):
        if not _is_size(image.get(key)):
            problems.append(f"images[{i}].{key}: expected a positive number, got {shown(image.get(key))}")
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        if key in image and not (isinstance(image[key], list) and all(_is_int(c) for c in image[key])):
            problems.append(f"images[{i}].{key}: expected a list of category ids, got {shown(image[key])}")
    return problems


def coco_type_problems(raw: dict) -> list[str]:
    """Type-level problems of a COCO (or LVIS) annotation object, each naming its record: what pycocotools
    would otherwise turn into a traceback or, worse, silently wrong indexes (mixed str/int ids)."""
    problems = [*_id_problems(raw["images"], "images"), *_id_problems(raw["categories"], "categories")]
    if problems:
        return problems
    for i, image in enumerate(raw["images"]):
        problems += _image_problems(i, image)
    category_ids = {category["id"] for category in raw["categories"]}
    for i, image in enumerate(raw["images"]):  # LVIS's lists name categories, as an annotation does
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            listed = image.get(key)
            unknown = [c for c in listed if c not in category_ids] if isinstance(listed, list) else []
            if unknown and all(_is_int(c) for c in listed):
                problems.append(f"images[{i}].{key}: unknown category id(s) {shown(unknown)}")
    image_ids = {image["id"] for image in raw["images"]}
    for i, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{i}]: expected an object, got {type(ann).__name__}")
            continue
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann.get(key)):
                problems.append(f"annotations[{i}].{key}: expected an integer, got {shown(ann.get(key))}")
        if _is_int(ann.get("image_id")) and ann["image_id"] not in image_ids:
            problems.append(f"annotations[{i}].image_id: no image with id {ann['image_id']}")
    return problems


def _resolve(root: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else root / candidate


class CocoDetection(Dataset):
    """One split. Items are (uint8 CHW image tensor, target dict with xyxy boxes, labels 1..K, image_id)."""

    def __init__(
        self,
        split: SplitSpec,
        root: Path,
        drop_invalid_boxes: bool = False,
        limit: int | None = None,
        categories: CategoryMap | None = None,
        skip_all_ignored: bool = False,
    ) -> None:
        self.annotation_file = _resolve(root, split.annotations)
        self.image_dir = _resolve(root, split.images)
        self.coco = load_coco(self.annotation_file)
        self.categories = categories or category_map(self.coco, self.annotation_file)
        self.image_ids = sorted(self.coco.imgs)[:limit] if limit else sorted(self.coco.imgs)
        self.dropped_boxes = 0
        self._targets = {
            image_id: self._check_image(image_id, drop_invalid_boxes) for image_id in self.image_ids
        }
        if self.dropped_boxes:
            log.info(
                "%s: dropped %d invalid box(es) (data.drop_invalid_boxes=true)",
                self.annotation_file,
                self.dropped_boxes,
            )
        if skip_all_ignored:
            self._skip_all_ignored()

    def _skip_all_ignored(self) -> None:
        """Leave out images that hold objects but no training box (every annotation crowd or dropped).

        Trained as they are, their objects would be taught as background. Images without annotations stay:
        under COCO they are true negatives. LVIS evaluation still sees them (this is the train split).
        """
        skipped = {
            image_id
            for image_id in self.image_ids
            if self.coco.imgToAnns.get(image_id) and len(self._targets[image_id]["labels"]) == 0
        }
        if skipped:
            self.image_ids = [image_id for image_id in self.image_ids if image_id not in skipped]
            log.info(
                "%s: skipped %d image(s) whose annotations are all ignored (crowd regions or dropped invalid boxes)",
                self.annotation_file,
                len(skipped),
            )

    def _check_image(self, image_id: int, drop_invalid: bool) -> dict[str, torch.Tensor]:
        info = self.coco.imgs[image_id]
        for key in ("file_name", "width", "height"):
            if key not in info:
                raise FrostError(f"{self.annotation_file}: image id {image_id} has no '{key}'")
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FrostError(f"{self.annotation_file}: image id {image_id}: missing image file {path}")
        width, height = float(info["width"]), float(info["height"])
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            problem = box_problem(ann.get("bbox"), width, height)
            if problem is None and ann.get("category_id") not in self.coco.cats:
                raise FrostError(
                    f"{self.annotation_file}: annotation id {ann.get('id')}: unknown category id "
                    f"{ann.get('category_id')}"
                )
            if problem is not None:
                if drop_invalid:
                    self.dropped_boxes += 1
                    continue
                raise FrostError(
                    f"{self.annotation_file}: annotation id {ann.get('id')} (image {info['file_name']}): "
                    f"{problem}; fix it or set data.drop_invalid_boxes=true"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
            labels.append(self.categories.label(ann["category_id"]))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) as the annotation file gives it."""
        info = self.coco.imgs[self.image_ids[index]]
        return int(info["height"]), int(info["width"])

    def blank(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`self[index]` without reading the image: zeros of its annotated size, and its target.

        For trials whose backbone reads the feature cache: the detector then uses the image's size, never its
        pixels (building the cache checked every image's size against its annotation).
        """
        height, width = self.image_size(index)
        return torch.zeros((), dtype=torch.uint8).expand(3, height, width), self._target(index)

    def _target(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in self._targets[self.image_ids[index]].items()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        path = self.image_path(index)
        try:
            with Image.open(path) as image:
                tensor = pil_to_tensor(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise FrostError(f"{path}: unreadable image ({exc})") from None
        return tensor, self._target(index)


def box_problem(bbox: object, width: float, height: float) -> str | None:
    """Why a COCO xywh box is invalid in a `width` x `height` image (None: valid): the one rule the loader and
    the importers (trainers/importers/) share. A 1-pixel overhang is tolerated."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox must be [x, y, w, h], got {shown(bbox)}"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox must be numbers, got {shown(bbox)}"
    if not all(math.isfinite(v) for v in (x, y, w, h)):  # NaN slips past every comparison below
        return f"bbox {shown(list(bbox))} has a coordinate that is not a finite number"
    if w <= 0 or h <= 0:
        return f"bbox {list(bbox)} has zero or negative area"
    tol = _EDGE_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {list(bbox)} lies outside the {width:g}x{height:g} image"
    return None


def category_map(coco: COCO, source: Path | str = "annotations") -> CategoryMap:
    if not coco.cats:
        raise FrostError(f"{source}: no categories")
    ids = tuple(sorted(coco.cats))
    return CategoryMap(ids, tuple(str(coco.cats[i].get("name", i)) for i in ids))


def load_datasets(data: DataSpec) -> tuple[CocoDetection, CocoDetection]:
    """Train and val splits of the spec's dataset (generating the built-in one on first use)."""
    if data.source == "synth":
        from trainers.synth.dataset import ensure_synth_dataset

        root = ensure_synth_dataset(data)
    else:
        root = data.resolved_root()
        if not root.is_dir():
            raise FrostError(f"data.root: {root} is not a directory")
    train = CocoDetection(data.train, root, data.drop_invalid_boxes, data.limit_train, skip_all_ignored=True)
    val = CocoDetection(data.val, root, data.drop_invalid_boxes, data.limit_val, categories=train.categories)
    unknown = set(val.coco.cats) - set(train.categories.category_ids)
    if unknown:
        raise FrostError(f"{val.annotation_file}: category ids {sorted(unknown)} are not in the train split")
    return train, val


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Horizontal flip of a CHW image and its xyxy boxes."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}
