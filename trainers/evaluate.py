"""COCO box evaluation with per-class AP and long-tail buckets (rare / common / frequent).

pycocotools' COCOeval does the matching, crowd handling and 101-point interpolation; this module only feeds
it, keeps it quiet (the CLI's last stdout line must be JSON, and COCOeval prints) and reads its precision
array per class. numpy + pycocotools only: no torch here, so evaluation can run anywhere.

Conventions (all floats in 0..1, or -1.0):
- -1.0 means "nothing to evaluate": COCO's own -1 for an area range without ground truth is kept, a class
  without (non-crowd) validation ground truth has per-class AP -1.0 and is left out of its bucket's mean,
  and a bucket with no such class has AP_r / AP_c / AP_f -1.0.
- An empty detection list evaluates like any other (no crash): 0.0 wherever there is ground truth, -1.0
  where COCOeval would say -1 anyway.
- Buckets follow LVIS: classes in 1-10 training images are rare, 11-100 common, > 100 frequent (thresholds
  configurable); a class in no training image counts as rare. A category's LVIS `frequency` field wins.
- Two protocols (docs/evaluation.md): `coco`, plain COCOeval as always, and `lvis`, LVIS's federated rules
  (trainers/federated.py) for annotations with per-image `neg_category_ids` / `not_exhaustive_category_ids`;
  `auto` picks by those fields. The recall key names the per-image cap: AR100 for COCO, AR300 for LVIS.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainers.errors import FrostError
from trainers.federated import FederatedCOCOeval, max_detections_of, resolve_protocol, top_per_image

BUCKETS = ("r", "c", "f")
PER_CLASS_KEYS = ("category_id", "name", "AP", "AP50", "train_images", "bucket", "val_instances")


def metric_keys(max_detections: int = 100) -> tuple[str, ...]:
    """The metrics of an evaluation capped at `max_detections` per image, in order."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", f"AR{max_detections}", "AP_r", "AP_c", "AP_f")


METRIC_KEYS = metric_keys(100)
_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


@dataclass
class EvalResult:
    """`metrics`: the keys of metric_keys(max_detections). `per_class`: one dict (PER_CLASS_KEYS) per
    category, by id. `protocol`: coco or lvis, as evaluated."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    protocol: str = "coco"
    max_detections: int = 100


# --------------------------------------------------------------------------------------------- buckets
def train_image_counts(coco_train: COCO) -> dict[int, int]:
    """Category id -> number of training images holding at least one non-crowd box of it.

    Images, not instances (LVIS's rule). Crowd boxes are left out because the trainer drops them from the
    targets: a class seen only as crowd regions was never a training example.
    """
    images: dict[int, set[int]] = {int(cat_id): set() for cat_id in coco_train.cats}
    for ann in coco_train.anns.values():
        if ann.get("iscrowd", 0):
            continue
        images.setdefault(int(ann["category_id"]), set()).add(int(ann["image_id"]))
    return {cat_id: len(image_ids) for cat_id, image_ids in sorted(images.items())}


def bucket_of(train_images: int, rare_max: int = 10, common_max: int = 100) -> str:
    """Bucket of a class seen in `train_images` images: r for 0..rare_max, c up to common_max, else f."""
    if train_images <= rare_max:
        return "r"
    if train_images <= common_max:
        return "c"
    return "f"


def category_buckets(coco_train: COCO, rare_max: int = 10, common_max: int = 100) -> dict[int, str]:
    """Category id -> "r" / "c" / "f", from the category's `frequency` field if it has one, else from counts."""
    if rare_max < 0 or common_max < rare_max:
        raise ValueError(f"bucket thresholds need 0 <= rare_max <= common_max, got {rare_max}, {common_max}")
    counts = train_image_counts(coco_train)
    buckets = {}
    for cat_id, count in counts.items():
        frequency = coco_train.cats.get(cat_id, {}).get("frequency")
        if frequency is None:
            buckets[cat_id] = bucket_of(count, rare_max, common_max)
        elif frequency in BUCKETS:
            buckets[cat_id] = frequency
        else:
            raise FrostError(
                f"categories[id={cat_id}].frequency: expected one of r, c, f (LVIS), got {frequency!r}"
            )
    return buckets


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_detections(
    coco_gt: COCO,
    detections: list[dict[str, Any]],
    buckets: dict[int, str],
    train_counts: dict[int, int] | None = None,
    image_ids: Iterable[int] | None = None,
    protocol: str = "auto",
    max_detections: int | None = None,
) -> EvalResult:
    """Box metrics, per-class AP and AP per long-tail bucket, by the COCO or the LVIS protocol. Prints nothing.

    detections: COCO results format (image_id, category_id as the dataset's ids, bbox [x, y, w, h],
    score); not modified. image_ids: the images evaluated, default all of coco_gt's (also those without
    annotations, where every detection is a false positive under COCO). A category missing from `buckets`
    counts as rare (it has no training images); `train_images` is None without `train_counts`.
    protocol: auto | coco | lvis (module docstring); max_detections: per image, default 100 (COCO) or
    300 (LVIS).
    """
    image_ids = sorted(int(i) for i in (coco_gt.getImgIds() if image_ids is None else image_ids))
    _check_detections(coco_gt, detections, image_ids)
    protocol = resolve_protocol(protocol, coco_gt)
    cap = max_detections_of(protocol, max_detections)
    _fill_box_defaults(coco_gt)
    if protocol == "lvis":
        coco_eval = FederatedCOCOeval(coco_gt, _results_coco(coco_gt, top_per_image(detections, cap)), "bbox")
    else:
        coco_eval = COCOeval(coco_gt, _results_coco(coco_gt, detections), iouType="bbox")
    coco_eval.params.imgIds = image_ids
    coco_eval.params.maxDets = [cap]
    with _quiet():
        coco_eval.evaluate()
        coco_eval.accumulate()

    metrics = summary_metrics(coco_eval)
    per_class = _per_class_rows(coco_gt, coco_eval, buckets, train_counts, image_ids)
    for bucket in BUCKETS:
        metrics[f"AP_{bucket}"] = bucket_mean(per_class, bucket)
    return EvalResult(
        metrics={key: metrics[key] for key in metric_keys(cap)},
        per_class=per_class,
        protocol=protocol,
        max_detections=cap,
    )


def summary_metrics(coco_eval: COCOeval) -> dict[str, float]:
    """AP, AP50, AP75, APs/m/l and AR at the cap (keyed AR<cap>) from an accumulated COCOeval.

    What COCOeval.summarize() computes (the mean of the entries > -1 of the same slices, in the same order,
    so COCO's numbers are bit-identical), read here because summarize() reads AP at maxDets 100 whatever
    params.maxDets says: LVIS's cap of 300 would give -1.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # T x R x K x A x M
    recall = coco_eval.eval["recall"]  # T x K x A x M
    cap = len(params.maxDets) - 1
    area = {label: params.areaRngLbl.index(label) for label in ("all", "small", "medium", "large")}

    def iou(threshold: float) -> int:
        return int(np.flatnonzero(np.isclose(params.iouThrs, threshold))[0])

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    return {
        "AP": mean(precision[:, :, :, area["all"], cap]),
        "AP50": mean(precision[iou(0.5), :, :, area["all"], cap]),
        "AP75": mean(precision[iou(0.75), :, :, area["all"], cap]),
        "APs": mean(precision[:, :, :, area["small"], cap]),
        "APm": mean(precision[:, :, :, area["medium"], cap]),
        "APl": mean(precision[:, :, :, area["large"], cap]),
        f"AR{params.maxDets[cap]}": mean(recall[:, :, area["all"], cap]),
    }


def class_ap(precision: np.ndarray, k: int, area: int, max_dets: int, iou: int | None = None) -> float:
    """Mean of COCOeval precision (T x R x K x A x M) over IoU thresholds (or one) and recall points.

    Entries of -1 (no ground truth) are skipped; -1.0 when none is left.
    """
    values = precision[:, :, k, area, max_dets] if iou is None else precision[iou, :, k, area, max_dets]
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def bucket_mean(per_class: list[dict[str, Any]], bucket: str) -> float:
    """Mean per-class AP over the bucket's classes that have validation ground truth; -1.0 if none."""
    aps = [row["AP"] for row in per_class if row["bucket"] == bucket and row["AP"] > -1]
    return float(np.mean(aps)) if aps else -1.0


def _per_class_rows(
    coco_gt: COCO,
    coco_eval: COCOeval,
    buckets: dict[int, str],
    train_counts: dict[int, int] | None,
    image_ids: list[int],
) -> list[dict[str, Any]]:
    params = coco_eval.params
    precision = coco_eval.eval["precision"]
    area_all = params.areaRngLbl.index("all")
    max_dets = len(params.maxDets) - 1  # the cap
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    instances = _val_instances(coco_gt, image_ids)
    rows = []
    for k, cat_id in enumerate(params.catIds):
        rows.append(
            {
                "category_id": int(cat_id),
                "name": str(coco_gt.cats[cat_id].get("name", cat_id)),
                "AP": class_ap(precision, k, area_all, max_dets),
                "AP50": class_ap(precision, k, area_all, max_dets, iou=iou50),
                "train_images": None if train_counts is None else int(train_counts.get(cat_id, 0)),
                "bucket": buckets.get(cat_id, "r"),
                "val_instances": instances.get(cat_id, 0),
            }
        )
    return rows


def _val_instances(coco_gt: COCO, image_ids: list[int]) -> dict[int, int]:
    """Non-crowd ground-truth boxes per category on the evaluated images (crowd ones are never matched)."""
    counts: dict[int, int] = {}
    for image_id in image_ids:
        for ann in coco_gt.imgToAnns.get(image_id, []):
            if not ann.get("iscrowd", 0):
                counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    return counts


def _check_detections(coco_gt: COCO, detections: list[dict[str, Any]], image_ids: list[int]) -> None:
    """Mismatched ids would be silently dropped by COCOeval (categories) or assert in loadRes (images)."""
    for index, det in enumerate(detections):
        missing = [key for key in _DETECTION_KEYS if key not in det]
        if missing:
            raise FrostError(f"detections[{index}]: missing {', '.join(missing)}")
        if len(det["bbox"]) != 4:
            raise FrostError(f"detections[{index}].bbox: expected [x, y, w, h], got {det['bbox']!r}")
    known_images = set(image_ids)
    stray_images = sorted({int(d["image_id"]) for d in detections} - known_images)
    if stray_images:
        raise FrostError(
            f"detections: image_id(s) {_some(stray_images)} are not among the {len(known_images)} evaluated "
            "ground-truth images"
        )
    stray_cats = sorted({int(d["category_id"]) for d in detections} - set(coco_gt.cats))
    if stray_cats:
        raise FrostError(
            f"detections: category_id(s) {_some(stray_cats)} are not categories of the ground truth "
            f"(ids {_some(sorted(coco_gt.cats))}); detections must use the dataset's category ids, "
            "not contiguous label indices"
        )


def _fill_box_defaults(coco_gt: COCO) -> None:
    # COCOeval reads `area` (area ranges) and `iscrowd` (crowd IoU) of every box and raises KeyError
    # without them; box-only data sets often omit both. w*h is the box-data convention for area.
    for ann in coco_gt.anns.values():
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)


def _results_coco(coco_gt: COCO, detections: list[dict[str, Any]]) -> COCO:
    """The results as a COCO object. loadRes indexes detections[0] (fails on []) and edits the dicts."""
    if not detections:
        results = COCO()
        results.dataset = {
            "images": list(coco_gt.dataset.get("images", [])),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        with _quiet():
            results.createIndex()
        return results
    with _quiet():
        return coco_gt.loadRes([_plain_detection(det) for det in detections])


def _plain_detection(det: dict[str, Any]) -> dict[str, Any]:
    """A fresh dict of plain Python numbers (numpy scalars break JSON and loadRes's type checks)."""
    return {
        "image_id": int(det["image_id"]),
        "category_id": int(det["category_id"]),
        "bbox": [float(v) for v in det["bbox"]],
        "score": float(det["score"]),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pycocotools reports progress with print(); stdout belongs to the CLI's JSON output.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _some(values: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ----------------------------------------------------------------------------------------------- files
def write_eval_files(result: EvalResult, detections: list[dict[str, Any]], out_dir: Path) -> None:
    """metrics.json, per_class_ap.csv, per_class_ap.json and detections.json in out_dir (created).

    Each file is written to a temporary name and renamed, so a killed trial never leaves half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "metrics.json", _to_json(result.metrics, indent=2))
    _write_text(out_dir / "per_class_ap.json", _to_json(result.per_class, indent=2))
    _write_text(out_dir / "per_class_ap.csv", _per_class_csv(result.per_class))
    _write_text(out_dir / "detections.json", _to_json([_plain_detection(d) for d in detections]))


def _per_class_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(PER_CLASS_KEYS), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in PER_CLASS_KEYS})
    return buffer.getvalue()


def _to_json(data: Any, indent: int | None = None) -> str:
    # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers; fail loudly instead.
    return json.dumps(data, indent=indent, allow_nan=False) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
