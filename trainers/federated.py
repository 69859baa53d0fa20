"""LVIS's federated box evaluation as a subclass of pycocotools' COCOeval (docs/evaluation.md).

LVIS is not exhaustively labelled. Each image lists the categories verified present (its annotations),
verified absent (`neg_category_ids`) and present but not exhaustively annotated
(`not_exhaustive_category_ids`). The rules of the LVIS paper and its reference code (lvis-api, `LVISEval`
and `LVISResults`), each mapped onto one COCOeval step so that box matching, crowd handling and the 101-point
interpolation stay pycocotools':

1. At most `max_detections` (300) detections per image, the highest-scoring, across categories: applied to
   the detection list before COCOeval sees it (`top_per_image`), as LVISResults does.
2. A detection of category c on image i is evaluated only when c is positive (annotated) or negative on i:
   the other (image, category) pairs lose their detections in `_prepare`.
3. On image i, an unmatched detection of a category in i's `not_exhaustive_category_ids` is ignored, not
   a false positive: `evaluateImg` adds it to COCOeval's per-image `dtIgnore`.

numpy + pycocotools only, like trainers/evaluate.py.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainers.errors import FrostError, shown

LVIS_IMAGE_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")
PROTOCOLS = ("coco", "lvis")
DEFAULT_MAX_DETECTIONS = {"coco": 100, "lvis": 300}


def is_federated(coco_gt: COCO, source: Path | str = "annotations") -> bool:
    """True when the images carry LVIS's verification lists; every image must then carry both."""
    images = coco_gt.dataset.get("images", [])
    if not any(key in image for image in images for key in LVIS_IMAGE_FIELDS):
        return False
    for image in images:
        for key in LVIS_IMAGE_FIELDS:
            if not isinstance(image.get(key), list):
                raise FrostError(
                    f"{source}: image id {image.get('id')} has no {key} list, but other images carry LVIS's "
                    f"{' / '.join(LVIS_IMAGE_FIELDS)}: give every image both (LVIS format) or none (COCO)"
                )
    return True


def resolve_protocol(protocol: str, coco_gt: COCO, source: Path | str = "annotations") -> str:
    """`auto` -> `lvis` for federated annotations, else `coco`; `lvis` on data without the lists is refused."""
    federated = is_federated(coco_gt, source)
    if protocol == "auto":
        return "lvis" if federated else "coco"
    if protocol == "lvis" and not federated:
        raise FrostError(
            f"eval.protocol: lvis needs {' and '.join(LVIS_IMAGE_FIELDS)} on every image of {source}; "
            "use auto or coco for COCO-format data"
        )
    if protocol not in PROTOCOLS:
        raise FrostError(f"eval.protocol: expected auto, coco or lvis, got {shown(protocol)}")
    return protocol


def max_detections_of(protocol: str, configured: int | None) -> int:
    """eval.max_detections, or the protocol's own cap (COCO 100, LVIS 300)."""
    return configured if configured is not None else DEFAULT_MAX_DETECTIONS[protocol]


def top_per_image(detections: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The `limit` highest-scoring detections of each image, across categories (LVISResults'
    limit_dets_per_image: a stable sort, so equal scores keep their order)."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for det in detections:
        by_image[int(det["image_id"])].append(det)
    kept = []
    for dets in by_image.values():
        kept += dets if len(dets) <= limit else sorted(dets, key=lambda d: -float(d["score"]))[:limit]
    return kept


class FederatedCOCOeval(COCOeval):
    """COCOeval with LVIS's federated rules 2 and 3 (module docstring); rule 1 is the caller's
    (`top_per_image`), with `params.maxDets[-1]` set to the same cap."""

    def _prepare(self) -> None:
        super()._prepare()
        images = {int(i): self.cocoGt.imgs[i] for i in self.params.imgIds}
        positive: dict[int, set[int]] = defaultdict(set)
        for image_id, category_id in self._gts:
            positive[image_id].add(category_id)
        verified = {
            image_id: positive[image_id] | set(image["neg_category_ids"])
            for image_id, image in images.items()
        }
        detections: dict[tuple[int, int], list[dict[str, Any]]] = self._dts  # type: ignore[has-type]
        self._dts = defaultdict(
            list, {key: dts for key, dts in detections.items() if key[1] in verified.get(key[0], set())}
        )
        self.not_exhaustive = {
            image_id: set(image["not_exhaustive_category_ids"]) for image_id, image in images.items()
        }

    def evaluateImg(self, imgId: int, catId: int, aRng: list[float], maxDet: int) -> dict[str, Any] | None:
        result = super().evaluateImg(imgId, catId, aRng, maxDet)
        if result is not None and catId in self.not_exhaustive.get(imgId, ()):
            # An unmatched detection of a category not exhaustively annotated here may be an object nobody
            # labelled: LVIS neither rewards nor penalises it.
            result["dtIgnore"] = np.logical_or(result["dtIgnore"], result["dtMatches"] == 0)
        return result
