"""LVIS's federated evaluation (trainers/federated.py) against hand-built ground truth with hand-derived values.

Where the expected values come from: the LVIS paper (Gupta et al., CVPR 2019, section 4 "evaluation") and
its reference code, lvis-api's `LVISEval` / `LVISResults`, read rule by rule (docs/evaluation.md):
1. keep the 300 highest-scoring detections of each image, across categories;
2. evaluate a detection of category c on image i only if c is annotated on i or in i's neg_category_ids;
3. on image i, ignore an unmatched detection of a category in i's not_exhaustive_category_ids;
then COCO's per-category precision/recall (detections by score, TP/FP per IoU threshold, precision made
non-increasing from the right, sampled at recall 0.00, 0.01, ..., 1.00, 0 above the highest recall reached;
AP = mean over 10 IoU thresholds x 101 points; -1 without ground truth); AP, AP_r, AP_c, AP_f = means over
categories (by their `frequency`); AR300 = mean over categories and IoU thresholds of the recall reached.
Every detection below is either identical to a ground-truth box or overlaps none, so each IoU threshold sees
the same and AP50 = AP.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_evaluate import FAR, LARGE, MEDIUM, SMALL, det, make_coco

from trainers.errors import FrostError
from trainers.evaluate import METRIC_KEYS, category_buckets, evaluate_detections, metric_keys
from trainers.federated import resolve_protocol, top_per_image

LVIS_KEYS = metric_keys(300)


def make_gt(annotations, frequency, lists=None, num_images=4) -> COCO:
    """test_evaluate's in-memory COCO set, with categories' `frequency`; lists: image id ->
    (neg_category_ids, not_exhaustive_category_ids), making it LVIS format when given."""
    coco = make_coco(annotations, list(frequency), num_images=num_images, frequency=frequency)
    for image in coco.dataset["images"] if lists is not None else []:  # coco.imgs holds the same dicts
        negative, not_exhaustive = lists.get(image["id"], ([], []))
        image.update(neg_category_ids=list(negative), not_exhaustive_category_ids=list(not_exhaustive))
    return coco


def evaluate(gt, detections, **kwargs):
    result = evaluate_detections(gt, detections, category_buckets(gt), **kwargs)
    return result, {row["category_id"]: row["AP"] for row in result.per_class}


# -------------------------------------------------------------------------------------- the three rules
# One category, two ground-truth boxes (images 1 and 2), one found: AP 51/101 under both protocols (recall
# 0.5 at precision 1: points 0.00..0.50 score 1). Image 1 is not exhaustive for class 1; image 3 lists
# class 1 as verified absent; image 4 says nothing about it.
ONE_CLASS = {
    "annotations": [(1, 1, SMALL), (2, 1, MEDIUM)],
    "frequency": {1: "r"},
    "lists": {1: ([], [1]), 3: ([1], [])},
}
FOUND = det(1, 1, SMALL, 0.9)


@pytest.mark.parametrize(
    ("extra", "lvis_ap", "coco_ap"),
    [
        # Class 1 is neither annotated nor negative on image 4: LVIS drops the detection (rule 2). COCO
        # counts a false positive ranked first: precision 0, 1/2 -> 1/2, 1/2; points 0..0.50 score 1/2.
        (det(4, 1, FAR, 0.95), 51 / 101, 25.5 / 101),
        # Unmatched, on image 1, which is not exhaustive for class 1: ignored under LVIS (rule 3).
        (det(1, 1, FAR, 0.95), 51 / 101, 25.5 / 101),
        # Class 1 is verified absent on image 3: a false positive under both.
        (det(3, 1, FAR, 0.95), 25.5 / 101, 25.5 / 101),
        # Matched on the not-exhaustive image 1 (a duplicate box found first): rule 3 ignores only
        # unmatched detections, so it is the TP and FOUND the unmatched duplicate, ignored under LVIS and
        # a FP ranked after the TP under COCO (which then costs nothing): 51/101 under both.
        (det(1, 1, SMALL, 0.95), 51 / 101, 51 / 101),
    ],
    ids=["unverified-category", "not-exhaustive-image", "negative-category", "not-exhaustive-match"],
)
def test_federated_rules_on_one_class(extra, lvis_ap, coco_ap):
    gt = make_gt(**ONE_CLASS)
    baseline, _ = evaluate(gt, [FOUND], protocol="lvis")
    assert baseline.metrics["AP"] == pytest.approx(51 / 101)
    lvis, _ = evaluate(gt, [FOUND, extra])
    assert lvis.protocol == "lvis"  # auto: the images carry the lists
    assert lvis.metrics["AP"] == pytest.approx(lvis_ap) and lvis.metrics["AP_r"] == pytest.approx(lvis_ap)
    assert lvis.metrics["AP50"] == pytest.approx(lvis_ap)
    coco, _ = evaluate(gt, [FOUND, extra], protocol="coco")
    assert coco.protocol == "coco" and coco.metrics["AP"] == pytest.approx(coco_ap)


def test_perfect_detections_score_one():
    gt = make_gt(
        [(1, 1, SMALL), (1, 3, LARGE), (2, 2, MEDIUM), (3, 3, MEDIUM)],
        {1: "r", 2: "c", 3: "f"},
        {1: ([2], [3]), 2: ([1, 3], []), 4: ([1, 2, 3], [])},
    )
    perfect = [det(i, c, b, 0.9 - n / 10) for n, (i, c, b) in enumerate(gt_boxes(gt))]
    result, aps = evaluate(gt, perfect)
    assert tuple(result.metrics) == LVIS_KEYS and "AR100" not in result.metrics
    for key in LVIS_KEYS:
        assert result.metrics[key] == pytest.approx(1.0), key
    assert aps == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    assert result.max_detections == 300


def gt_boxes(gt: COCO):
    return [(a["image_id"], a["category_id"], a["bbox"]) for a in gt.dataset["annotations"]]


# --------------------------------------------------------------------------- a small fixture, every rule
def test_small_fixture_matches_the_published_rules():
    """Three classes (rare, common, frequent) on four images; eleven detections.

    Image lists: 1 neg [2]; 2 not exhaustive [3]; 3 neg [1]; 4 neg [1, 3] and no annotation.
    Class 1 (gt: image 1): 0.95 on image 2 (unverified: dropped), 0.92 on image 3 (negative: FP), 0.9 TP.
      LVIS ranks FP, TP: AP 1/2. COCO ranks FP, FP, TP: precision 1/3 everywhere, AP 1/3.
    Class 2 (gt: image 2): 0.99 on image 4 (unverified: dropped), 0.7 on image 1 (negative: FP), 0.6 TP.
      LVIS 1/2, COCO 1/3 (same shapes as class 1).
    Class 3 (gt: images 1, 2, 3): 0.97 unmatched on image 2 (not exhaustive: ignored), 0.5 TP (image 1),
      0.45 on image 4 (negative: FP), 0.4 TP (image 2); image 3's box is missed.
      LVIS ranks TP, FP, TP: recall 1/3, 1/3, 2/3, precision 1, 1/2, 2/3 -> 1, 2/3, 2/3; points 0..0.33
      (34) score 1, 0.34..0.66 (33) score 2/3, the rest 0: AP (34 + 22) / 101 = 56/101.
      COCO ranks FP, TP, FP, TP: precision 0, 1/2, 1/3, 1/2 -> 1/2 throughout; points 0..0.66 (67) score
      1/2: AP 33.5/101.
    AR (both): class recall 1, 1, 2/3 -> 8/9.
    """
    gt = make_gt(
        [(1, 1, SMALL), (1, 3, LARGE), (2, 2, MEDIUM), (2, 3, SMALL), (3, 3, MEDIUM)],
        {1: "r", 2: "c", 3: "f"},
        {1: ([2], []), 2: ([], [3]), 3: ([1], []), 4: ([1, 3], [])},
    )
    detections = [
        det(2, 1, FAR, 0.95),
        det(3, 1, FAR, 0.92),
        det(1, 1, SMALL, 0.9),
        det(4, 2, FAR, 0.99),
        det(1, 2, FAR, 0.7),
        det(2, 2, MEDIUM, 0.6),
        det(2, 3, FAR, 0.97),
        det(1, 3, LARGE, 0.5),
        det(4, 3, SMALL, 0.45),
        det(2, 3, SMALL, 0.4),
    ]
    lvis, lvis_aps = evaluate(gt, detections)
    assert lvis_aps == pytest.approx({1: 0.5, 2: 0.5, 3: 56 / 101})
    expected = {"AP_r": 0.5, "AP_c": 0.5, "AP_f": 56 / 101, "AP": (1 + 56 / 101) / 3, "AR300": 8 / 9}
    for key, value in expected.items():
        assert lvis.metrics[key] == pytest.approx(value), key
    assert lvis.metrics["AP50"] == pytest.approx(lvis.metrics["AP"])
    # Only image 2's small class-3 box and image 1's small class-1 box are small: class 1 ranks FP (image 3,
    # the 30x30 box is small too), TP -> 1/2; class 3 ranks the large TP (its ground truth is out of range:
    # ignored), FP (image 4), TP -> 1/2; class 2 has no small ground truth (-1, left out).
    assert lvis.metrics["APs"] == pytest.approx(0.5)

    coco, coco_aps = evaluate(gt, detections, protocol="coco")
    assert coco_aps == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 33.5 / 101})
    assert coco.metrics["AP_r"] == pytest.approx(1 / 3) and coco.metrics["AR100"] == pytest.approx(8 / 9)


def test_at_most_300_detections_per_image_across_categories():
    # Image 1: class 1's box, found only by the 301st detection of the image (the 300 above it are class 2,
    # verified absent there). LVIS keeps 300 per image: class 1 is missed (AP 0, AR 0). COCOeval's own cap
    # is per image and category, so the COCO protocol keeps it, as does an LVIS cap of 301.
    gt = make_gt([(1, 1, SMALL)], {1: "r", 2: "f"}, {1: ([2], [])}, num_images=1)
    crowd_of_fps = [det(1, 2, [100.0 + n % 50, 100.0, 20.0, 20.0], 0.5 + n / 1000) for n in range(300)]
    detections = crowd_of_fps + [det(1, 1, SMALL, 0.1)]
    capped, aps = evaluate(gt, detections)
    assert aps[1] == 0.0 and capped.metrics["AR300"] == 0.0
    assert aps[2] == -1.0  # no ground truth of class 2: left out of AP
    assert evaluate(gt, detections, max_detections=301)[1][1] == pytest.approx(1.0)
    assert evaluate(gt, detections, protocol="coco")[1][1] == pytest.approx(1.0)
    assert len(top_per_image(detections, 300)) == 300 and detections[-1] not in top_per_image(detections, 300)


def test_configured_cap_names_the_recall_key():
    gt = make_gt(**ONE_CLASS)
    result, _ = evaluate(gt, [FOUND], max_detections=50)
    assert tuple(result.metrics) == metric_keys(50) and result.metrics["AR50"] == pytest.approx(0.5)
    assert tuple(evaluate(gt, [FOUND], protocol="coco")[0].metrics) == METRIC_KEYS


# ----------------------------------------------------------------------------------- choosing a protocol
def test_auto_picks_by_the_image_lists_and_lvis_needs_them():
    lvis = make_gt(**ONE_CLASS)
    coco = make_gt(ONE_CLASS["annotations"], ONE_CLASS["frequency"])  # `frequency` alone is no LVIS data
    assert resolve_protocol("auto", lvis) == "lvis" and resolve_protocol("coco", lvis) == "coco"
    assert resolve_protocol("auto", coco) == "coco"
    with pytest.raises(FrostError, match="eval.protocol: lvis needs neg_category_ids"):
        resolve_protocol("lvis", coco)
    del lvis.dataset["images"][2]["not_exhaustive_category_ids"]
    with pytest.raises(FrostError, match="image id 3 has no not_exhaustive_category_ids"):
        resolve_protocol("auto", lvis, "val.json")


def test_coco_data_evaluates_exactly_as_plain_cocoeval():
    """COCO-format data (here with a `frequency` field, as the built-in data has) under `auto`: every number
    equals pycocotools' own, run directly; 60 random detections, near and far from 30 boxes of 3 classes."""
    rng = np.random.default_rng(0)
    boxes = [(int(i), int(c), [float(v) for v in rng.uniform(0, 100, 2)] + [20.0, 30.0]) for i, c in
             zip(rng.integers(1, 6, 30), rng.integers(1, 4, 30))]  # fmt: skip
    gt = make_gt(boxes, {1: "r", 2: "c", 3: "f"}, num_images=6)
    detections = []
    for n in range(60):
        image_id, cat_id, box = boxes[n % 30]
        jitter = rng.normal(0, 4 if n < 30 else 40, 2)
        detections.append(det(image_id, int(rng.integers(1, 4)) if n % 7 == 0 else cat_id,
                              [box[0] + jitter[0], box[1] + jitter[1], 20.0, 30.0], float(rng.random())))  # fmt: skip
    result, aps = evaluate(gt, detections)
    assert result.protocol == "coco" and tuple(result.metrics) == METRIC_KEYS

    plain = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        plain.evaluate(), plain.accumulate(), plain.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", None, None, "AR100")
    assert {k: result.metrics[k] for k in keys if k} == {k: float(v) for k, v in zip(keys, plain.stats) if k}
    precision = plain.eval["precision"][:, :, :, 0, 2]
    assert [aps[c] for c in (1, 2, 3)] == [float(precision[:, :, k].mean()) for k in range(3)]
    assert 0.05 < result.metrics["AP"] < 0.95  # a fixture that tests something
