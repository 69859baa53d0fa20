"""The import's output, all or nothing: OUT/annotations/{train,val}.json and OUT/images/.

Everything is written into a staging folder beside OUT (same file system, so the final rename is atomic) and
renamed onto OUT at the end; on any error the staging folder is removed and OUT is as it was. Images are
hard-linked where the file system allows (no copy of a large dataset; the source must then not be edited in
place) and copied otherwise. An OUT that exists and is not empty is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from trainers.errors import FrostError
from trainers.files import atomic_write_json, fsync_dir, writable_folder
from trainers.importers.model import Img, Source


def check_out(out: Path) -> None:
    """OUT must not exist, or be an empty folder; its parent must be writable."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FrostError(f"OUT: {out} is a file; give a new or empty folder")
        if any(out.iterdir()):
            raise FrostError(f"OUT: {out} exists and is not empty; give a new or empty folder")
    writable_folder(out.parent, "OUT")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copyfile(src, dst)


def _unique_names(images: list[Img]) -> None:
    """Two different source files under one name: the later ones get a numbered folder of their own."""
    seen: dict[str, Path] = {}
    for image in images:
        name, n = image.file_name, 1
        while name in seen and seen[name] != image.source:
            name, n = f"dup{n}/{image.file_name}", n + 1
        image.file_name = name
        seen[name] = image.source


def coco_splits(source: Source) -> dict[str, dict[str, Any]]:
    images = sorted(source.images, key=lambda image: image.file_name)
    categories = [dict(source.categories[k], id=k) for k in sorted(source.categories)]
    splits: dict[str, dict[str, Any]] = {}
    ann_id = 0
    for split in ("train", "val"):
        records, annotations = [], []
        for image_id, image in enumerate(images, start=1):
            if image.split != split:
                continue
            records.append(
                {
                    "id": image_id,
                    "file_name": image.file_name,
                    "width": image.width,
                    "height": image.height,
                    **image.extra,
                }
            )
            for obj in image.objects:
                ann_id += 1
                x, y, w, h = (round(float(v), 3) for v in obj.bbox)
                annotations.append(
                    {
                        **obj.extra,
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": obj.category_id,
                        "bbox": [x, y, w, h],
                        "area": round(w * h, 3),
                        "iscrowd": obj.iscrowd,
                    }
                )
        splits[split] = {"images": records, "annotations": annotations, "categories": categories}
    return splits


def write_dataset(source: Source, out: Path) -> dict[str, dict[str, Any]]:
    _unique_names(source.images)
    splits = coco_splits(source)
    staging = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(mode=0o755)
        for image in source.images:
            _place(image.source, staging / "images" / image.file_name)
        for split, data in splits.items():
            atomic_write_json(staging / "annotations" / f"{split}.json", data)
        if out.is_dir():
            out.rmdir()  # empty, checked before; a race with another writer fails here, not silently
        os.rename(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise FrostError(
                f"OUT: {out} could not be written ({exc.strerror or exc}); nothing was left"
            ) from None
        raise
    fsync_dir(out.parent)
    return splits
