"""Per-class image and box counts of a COCO or LVIS dataset folder, with long-tail buckets.

Buckets are trainers/evaluate.py's `bucket_of` over train images (rare <= 10, common <= 100, frequent
above), unless a category carries LVIS's `frequency`, which wins, as in evaluation. Crowd boxes (VOC's
`difficult`) are counted apart, as `ignored`: they are not trained on and not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.errors import FrostError
from trainers.files import read_json

BUCKET_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def bucket_of(train_images: int, rare_max: int, common_max: int) -> str:
    from trainers.evaluate import bucket_of as evaluate_bucket_of  # torch-free, but pycocotools: lazily

    return evaluate_bucket_of(train_images, rare_max, common_max)


def coco_stats(
    splits: dict[str, dict[str, Any]], rare_max: int = 10, common_max: int = 100
) -> dict[str, Any]:
    """{"splits": {name: {images, boxes, ignored}}, "categories": [...], "buckets": {rare, common, frequent}}
    from COCO objects already checked (`coco_type_problems`)."""
    categories: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {"splits": {}, "categories": [], "buckets": {}}
    for raw in splits.values():
        for category in raw["categories"]:
            categories.setdefault(
                category["id"], {"id": category["id"], "name": str(category.get("name", ""))}
            )
            if "frequency" in category:
                categories[category["id"]]["frequency"] = category["frequency"]
    for split, raw in splits.items():
        images: dict[int, set[int]] = {}
        boxes: dict[int, int] = {}
        ignored: dict[int, int] = {}
        for ann in raw["annotations"]:
            category = ann["category_id"]
            if ann.get("iscrowd"):
                ignored[category] = ignored.get(category, 0) + 1
                continue
            boxes[category] = boxes.get(category, 0) + 1
            images.setdefault(category, set()).add(ann["image_id"])
        for category_id, row in categories.items():
            row[f"{split}_images"] = len(images.get(category_id, ()))
            row[f"{split}_boxes"] = boxes.get(category_id, 0)
            row["ignored"] = row.get("ignored", 0) + ignored.get(category_id, 0)
        summary["splits"][split] = {
            "images": len(raw["images"]),
            "boxes": sum(boxes.values()),
            "ignored": sum(ignored.values()),
        }
    counts = dict.fromkeys(BUCKET_NAMES.values(), 0)
    for row in sorted(categories.values(), key=lambda r: r["id"]):
        frequency = row.pop("frequency", None)
        code = (
            frequency
            if frequency in BUCKET_NAMES
            else bucket_of(row.get("train_images", 0), rare_max, common_max)
        )
        row["bucket"] = BUCKET_NAMES[code]
        counts[row["bucket"]] += 1
        summary["categories"].append(row)
    summary["buckets"] = counts
    return summary


def read_dataset(root: Path) -> dict[str, dict[str, Any]]:
    """annotations/train.json and val.json of a frost dataset folder (either may be missing, not both)."""
    from trainers.data import coco_type_problems

    splits = {}
    for split in ("train", "val"):
        path = root / "annotations" / f"{split}.json"
        if not path.exists():
            continue
        raw = read_json(path, "annotations")
        if not isinstance(raw, dict) or any(
            not isinstance(raw.get(k), list) for k in ("images", "annotations", "categories")
        ):
            raise FrostError(
                f"{path}: not COCO format (an object with images, annotations and categories lists)"
            )
        problems = coco_type_problems(raw)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise FrostError(f"{path}: " + "; ".join(problems[:5]) + more)
        splits[split] = raw
    if not splits:
        raise FrostError(
            f"{root}: no annotations/train.json or annotations/val.json; not a frost dataset folder"
        )
    return splits


def stats_table(summary: dict[str, Any]) -> list[str]:
    """The summary as a few lines for a terminal."""
    splits = list(summary["splits"])
    head = (
        f"{'id':>4}  {'category':<24} {'bucket':<9}"
        + "".join(f" {split + ' img':>10} {split + ' box':>10}" for split in splits)
        + f" {'ignored':>8}"
    )
    lines = [head]
    for row in summary["categories"]:
        cells = "".join(f" {row.get(f'{s}_images', 0):>10} {row.get(f'{s}_boxes', 0):>10}" for s in splits)
        lines.append(f"{row['id']:>4}  {row['name'][:24]:<24} {row['bucket']:<9}{cells} {row['ignored']:>8}")
    sizes = ", ".join(
        f"{split}: {n['images']} images, {n['boxes']} boxes ({n['ignored']} ignored)"
        for split, n in summary["splits"].items()
    )
    buckets = ", ".join(f"{count} {name}" for name, count in summary["buckets"].items())
    lines += [sizes, f"{len(summary['categories'])} categories: {buckets}"]
    return lines
