"""`frost data import`: VOC, YOLO or COCO sources -> a frost-ready COCO dataset (docs/data-import.md).

- model.py     what a reader yields: images, objects, categories, invalid records (`Problem`)
- voc.py       Pascal VOC XML (safe_xml.py: the standard library's expat, DTDs and entities refused)
- yolo.py      YOLO label files, data.yaml or classes.txt
- coco.py      COCO / LVIS JSON, checked with trainers/data.py's own rules
- split.py     the seeded, stratified train / val split for sources without one
- write.py     OUT/annotations/{train,val}.json and OUT/images, staged beside OUT and renamed at the end
- stats.py     per-class counts and long-tail buckets (`frost data stats`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.errors import FrostError
from trainers.importers.model import Problem, Source, listing

FORMATS = ("voc", "yolo", "coco")


@dataclass(frozen=True)
class ImportOptions:
    format: str
    val_fraction: float = 0.2
    val_split: str | None = None
    drop_invalid: bool = False
    seed: int = 0


def read_source(src: Path, options: ImportOptions) -> Source:
    if options.format == "voc":
        from trainers.importers.voc import read_voc

        return read_voc(src, options.val_split)
    if options.format == "yolo":
        from trainers.importers.yolo import read_yolo

        return read_yolo(src, options.val_split)
    if options.format == "coco":
        from trainers.importers.coco import read_coco

        return read_coco(src, options.val_split)
    raise FrostError(f"--format: expected one of {', '.join(FORMATS)}, got {options.format!r}")


def import_dataset(src: Path, out: Path, options: ImportOptions) -> tuple[dict[str, Any], list[Problem]]:
    """Read, check, split and write; returns the written dataset's stats and the records dropped.

    Invalid records without `drop_invalid` are a FrostError listing them, one a line, and OUT is not
    touched. With it, they are left out (a box, or its whole image when the image itself is bad)."""
    from trainers.importers.split import stratified_split
    from trainers.importers.stats import coco_stats
    from trainers.importers.write import check_out, write_dataset

    if not 0 <= options.val_fraction < 1:
        raise FrostError(f"--val-fraction: expected a number in [0, 1), got {options.val_fraction}")
    if not src.exists():
        raise FrostError(f"SRC: {src} does not exist")
    check_out(out)
    source = read_source(src, options)
    if source.problems and not options.drop_invalid:
        lines = listing(source.problems)
        raise FrostError(
            f"{src}: {len(source.problems)} invalid record(s); nothing written (--drop-invalid imports the rest):\n"
            + "\n".join(f"  {line}" for line in lines)
        )
    if not source.images:
        raise FrostError(f"{src}: no valid image to import")
    if not any(image.split == "val" for image in source.images):  # no split given (or train only)
        stratified_split(source.images, options.val_fraction, options.seed)
    else:
        for image in source.images:
            image.split = image.split or "train"
    if not any(image.split == "val" for image in source.images):
        raise FrostError(
            f"{src}: no image left for val ({len(source.images)} image(s), --val-fraction {options.val_fraction}); "
            "frost evaluates on val: give a larger --val-fraction or a source with a val split"
        )
    splits = write_dataset(source, out)
    return coco_stats(splits), source.problems
