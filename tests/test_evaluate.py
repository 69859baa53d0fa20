"""COCOeval wrapper, per-class AP and long-tail buckets, on hand-built ground truth with hand-derived values.

How COCOeval scores one class (what the expected values below rely on): detections sorted by score, each a
TP or FP per IoU threshold; precision made non-increasing from the right; sampled at 101 recall points
0.00, 0.01, ..., 1.00 (a point above the highest recall reached scores 0); AP = mean over the 10 IoU
thresholds and the 101 points. With boxes identical to the ground truth, every threshold sees the same.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from trainers.errors import FrostError
from trainers.evaluate import (
    METRIC_KEYS,
    PER_CLASS_KEYS,
    EvalResult,
    bucket_of,
    category_buckets,
    class_ap,
    evaluate_detections,
    train_image_counts,
    write_eval_files,
)

# Boxes in COCO's three area ranges (small < 32^2 <= medium < 96^2 <= large).
SMALL = [10.0, 10.0, 20.0, 20.0]
MEDIUM = [40.0, 40.0, 50.0, 50.0]
LARGE = [100.0, 100.0, 120.0, 120.0]
FAR = [200.0, 10.0, 30.0, 30.0]  # overlaps none of the above


def make_coco(annotations, categories, num_images=3, size=256, frequency=None) -> COCO:
    """An in-memory COCO set: images 1..num_images; annotations as (image_id, category_id, bbox[, iscrowd])."""
    cats = [{"id": cid, "name": f"class{cid}"} for cid in categories]
    for cat in cats:
        if frequency and cat["id"] in frequency:
            cat["frequency"] = frequency[cat["id"]]
    anns = []
    for ann_id, (image_id, cat_id, bbox, *crowd) in enumerate(annotations, start=1):
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat_id,
                "bbox": list(bbox),
                "area": bbox[2] * bbox[3],
                "iscrowd": crowd[0] if crowd else 0,
            }
        )
    images = [
        {"id": i, "width": size, "height": size, "file_name": f"{i}.png"} for i in range(1, num_images + 1)
    ]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def evaluate_quietly(capsys, coco_gt, detections, buckets=None, **kwargs) -> EvalResult:
    """evaluate_detections, asserting it printed nothing (the CLI's last stdout line must be JSON)."""
    capsys.readouterr()
    result = evaluate_detections(coco_gt, detections, buckets or {}, **kwargs)
    assert capsys.readouterr().out == ""
    return result


def per_class(result: EvalResult) -> dict[int, dict]:
    return {row["category_id"]: row for row in result.per_class}


@pytest.fixture
def three_scales():
    """Three classes, one per area range, on images 1-3; image 4 has no annotations."""
    gt = make_coco([(1, 1, SMALL), (2, 2, MEDIUM), (3, 3, LARGE), (3, 1, MEDIUM)], [1, 2, 3], num_images=4)
    perfect = [det(1, 1, SMALL, 0.9), det(2, 2, MEDIUM, 0.8), det(3, 3, LARGE, 0.7), det(3, 1, MEDIUM, 0.6)]
    return gt, perfect, {1: "r", 2: "c", 3: "f"}


# ------------------------------------------------------------------------------------------ COCO metrics
def test_perfect_detections_score_one(capsys, three_scales):
    gt, perfect, buckets = three_scales
    result = evaluate_quietly(capsys, gt, perfect, buckets)
    assert tuple(result.metrics) == METRIC_KEYS
    for key in METRIC_KEYS:
        # COCOeval's precision is tp / (tp + fp + eps): "1.0" is 1 - 2e-16.
        assert result.metrics[key] == pytest.approx(1.0), key
        assert isinstance(result.metrics[key], float)
    assert [row["category_id"] for row in result.per_class] == [1, 2, 3]
    for row in result.per_class:
        assert set(row) == set(PER_CLASS_KEYS)
        assert row["AP"] == pytest.approx(1.0) and row["AP50"] == pytest.approx(1.0)
    assert per_class(result)[1]["val_instances"] == 2
    assert per_class(result)[1]["name"] == "class1"


def test_one_of_two_boxes_missed(capsys):
    gt = make_coco([(1, 1, SMALL), (2, 1, MEDIUM)], [1])
    result = evaluate_quietly(capsys, gt, [det(1, 1, SMALL, 0.9)], {1: "r"})
    # One TP at recall 0.5 with precision 1; recall points 0.00..0.50 (51 of 101) get precision 1, the 50
    # above recall 0.5 get 0. Same at every IoU threshold: AP = AP50 = AP75 = 51/101 = 0.50495...
    for key in ("AP", "AP50", "AP75", "AP_r"):
        assert result.metrics[key] == pytest.approx(51 / 101), key
    assert per_class(result)[1]["AP"] == pytest.approx(51 / 101)
    assert result.metrics["AR100"] == pytest.approx(0.5)
    assert result.metrics["APs"] == pytest.approx(1.0)  # the small box was found
    assert result.metrics["APm"] == 0.0  # the medium one was not
    assert result.metrics["APl"] == -1.0  # no large ground truth: COCO's -1 is kept


@pytest.mark.parametrize(
    ("extra", "expected", "expected_ap50"),
    [
        # A box on the annotation-free image 2, ranked above the TP: ranks FP, TP; precision 0, 1/2, made
        # non-increasing from the right: 1/2, 1/2; recall 1 reached, so all 101 points score 1/2.
        (det(2, 1, SMALL, 0.95), 0.5, 0.5),
        # The same false positive ranked below the TP: recall 1 is reached at precision 1 first.
        (det(2, 1, SMALL, 0.5), 1.0, 1.0),
        # A duplicate of the TP with a higher score becomes the TP; the original is the (lower) duplicate.
        (det(1, 1, SMALL, 0.95), 1.0, 1.0),
        # A loose box (IoU 20 * 14.4 / 400 = 0.72) ranked above the tight one: at thresholds 0.50..0.70 it is
        # the TP and the tight box a duplicate after it (AP 1); at 0.75..0.95 it is an FP before the TP
        # (AP 1/2). AP = (5 * 1 + 5 * 0.5) / 10 = 0.75; AP50 = 1.
        (det(1, 1, [10.0, 10.0, 20.0, 14.4], 0.95), 0.75, 1.0),
    ],
    ids=["fp-above-tp", "fp-below-tp", "duplicate", "loose-box"],
)
def test_ranking_mistakes(capsys, extra, expected, expected_ap50):
    gt = make_coco([(1, 1, SMALL)], [1], num_images=2)
    result = evaluate_quietly(capsys, gt, [det(1, 1, SMALL, 0.9), extra], {1: "f"})
    assert result.metrics["AP"] == pytest.approx(expected)
    assert result.metrics["AP_f"] == pytest.approx(expected)
    assert result.metrics["AP50"] == pytest.approx(expected_ap50)
    assert per_class(result)[1]["AP"] == pytest.approx(expected)
    assert per_class(result)[1]["AP50"] == pytest.approx(expected_ap50)


def test_image_ids_restrict_the_evaluated_images(capsys):
    # E.g. data.limit_val: only image 1 was predicted, so image 2's box must not count as missed.
    gt = make_coco([(1, 1, SMALL), (2, 1, SMALL)], [1], num_images=2)
    result = evaluate_quietly(capsys, gt, [det(1, 1, SMALL, 0.9)], {1: "r"}, image_ids=[1])
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert per_class(result)[1]["val_instances"] == 1
    everything = evaluate_quietly(capsys, gt, [det(1, 1, SMALL, 0.9)], {1: "r"})
    assert everything.metrics["AP"] == pytest.approx(51 / 101)  # see test_one_of_two_boxes_missed
    with pytest.raises(FrostError, match="image_id"):
        evaluate_detections(gt, [det(2, 1, SMALL, 0.9)], {1: "r"}, image_ids=[1])


def test_crowd_region_detection_is_ignored_not_a_false_positive(capsys):
    detections = [det(1, 1, SMALL, 0.8), det(1, 1, [150.0, 150.0, 20.0, 20.0], 0.9)]
    crowd = [150.0, 140.0, 60.0, 60.0]  # holds the second detection entirely
    with_crowd = make_coco([(1, 1, SMALL), (1, 1, crowd, 1)], [1])
    without_crowd = make_coco([(1, 1, SMALL)], [1])

    honoured = evaluate_quietly(capsys, with_crowd, detections, {1: "r"})
    assert honoured.metrics["AP"] == pytest.approx(1.0)
    assert per_class(honoured)[1]["val_instances"] == 1  # the crowd box is not an instance to find
    # The same box with no crowd region under it is a false positive ranked first: AP 1/2 (see above).
    assert evaluate_quietly(capsys, without_crowd, detections, {1: "r"}).metrics["AP"] == pytest.approx(0.5)


def test_box_only_ground_truth_without_area_or_iscrowd(capsys):
    gt = make_coco([(1, 1, SMALL), (2, 1, LARGE)], [1])
    for ann in gt.anns.values():
        del ann["area"], ann["iscrowd"]
    result = evaluate_quietly(capsys, gt, [det(1, 1, SMALL, 0.9), det(2, 1, LARGE, 0.8)], {1: "r"})
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert result.metrics["APl"] == pytest.approx(1.0) and result.metrics["APm"] == -1.0


def test_empty_detection_list_gives_zeros(capsys, three_scales):
    gt, _, buckets = three_scales
    result = evaluate_quietly(capsys, gt, [], buckets, train_counts={1: 5, 2: 50, 3: 500})
    assert result.metrics == {key: 0.0 for key in METRIC_KEYS}
    assert [row["AP"] for row in result.per_class] == [0.0, 0.0, 0.0]
    assert [row["train_images"] for row in result.per_class] == [5, 50, 500]


def test_detections_are_not_modified_and_numpy_numbers_are_accepted(capsys):
    gt = make_coco([(1, 1, SMALL)], [1])
    detections = [
        {
            "image_id": np.int64(1),
            "category_id": np.int64(1),
            "bbox": np.array(SMALL),
            "score": np.float32(0.9),
        }
    ]
    before = copy.deepcopy(detections)
    result = evaluate_quietly(capsys, gt, detections, {1: "r"})
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert list(detections[0]) == list(before[0])  # loadRes would have added area, id, iscrowd, segmentation


@pytest.mark.parametrize(
    ("detection", "field"),
    [
        (det(1, 0, SMALL, 0.9), "category_id"),  # a contiguous label 0 instead of the dataset's id
        (det(9, 1, SMALL, 0.9), "image_id"),
        ({"image_id": 1, "category_id": 1, "bbox": SMALL}, "score"),
        (det(1, 1, SMALL[:3], 0.9), "bbox"),
    ],
)
def test_mismatched_detections_are_named(detection, field):
    gt = make_coco([(1, 1, SMALL)], [1])
    with pytest.raises(FrostError, match=field):
        evaluate_detections(gt, [detection], {1: "r"})


# ----------------------------------------------------------------------------------------- class means
def test_class_ap_skips_minus_one_entries():
    precision = -np.ones((2, 3, 3, 1, 1))
    precision[:, :, 0, 0, 0] = [[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]
    precision[0, :, 2, 0, 0] = [0.5, 0.5, 0.5]
    assert class_ap(precision, 0, 0, 0) == pytest.approx(0.75)
    assert class_ap(precision, 0, 0, 0, iou=0) == pytest.approx(0.5)
    assert class_ap(precision, 1, 0, 0) == -1.0
    assert class_ap(precision, 2, 0, 0) == pytest.approx(0.5)


def test_bucket_aps_are_means_of_their_classes(capsys):
    # Class 1: found (AP 1). Class 2: an FP above its TP (AP 1/2). Class 3: one of two found (AP 51/101).
    # Class 4: detections but no ground truth (AP -1, left out of the rare mean). No frequent class.
    gt = make_coco([(1, 1, SMALL), (2, 2, MEDIUM), (3, 3, SMALL), (3, 3, LARGE)], [1, 2, 3, 4])
    detections = [
        det(1, 1, SMALL, 0.9),
        det(2, 2, MEDIUM, 0.8),
        det(2, 2, FAR, 0.85),
        det(3, 3, SMALL, 0.7),
        det(1, 4, FAR, 0.6),
    ]
    buckets = {1: "r", 2: "r", 3: "c", 4: "r"}
    result = evaluate_quietly(capsys, gt, detections, buckets)
    aps = {cid: row["AP"] for cid, row in per_class(result).items()}
    assert aps == pytest.approx({1: 1.0, 2: 0.5, 3: 51 / 101, 4: -1.0})
    assert per_class(result)[4]["val_instances"] == 0
    assert result.metrics["AP_r"] == pytest.approx(0.75)
    assert result.metrics["AP_c"] == pytest.approx(51 / 101)
    assert result.metrics["AP_f"] == -1.0
    # A category the buckets do not know has no training images: rare.
    assert per_class(evaluate_quietly(capsys, gt, detections, {}))[3]["bucket"] == "r"


# ---------------------------------------------------------------------------------------------- buckets
COUNTS = {1: 0, 2: 10, 3: 11, 4: 100, 5: 101}


def training_set(counts=COUNTS, frequency=None) -> COCO:
    """Category c in exactly counts[c] images; each image also holds a second box of the same class and a
    crowd box of class 1 (neither may change a count); image 1000 holds only a crowd box of class 1."""
    annotations = []
    image_id = 0
    for cat_id, count in counts.items():
        for _ in range(count):
            image_id += 1
            annotations += [(image_id, cat_id, SMALL), (image_id, cat_id, LARGE), (image_id, 1, FAR, 1)]
    annotations.append((1000, 1, FAR, 1))
    return make_coco(annotations, list(counts), num_images=1000, frequency=frequency)


def test_train_image_counts_count_images_not_boxes_nor_crowds():
    assert train_image_counts(training_set()) == COUNTS


@pytest.mark.parametrize(
    ("rare_max", "common_max", "expected"),
    [
        (10, 100, {1: "r", 2: "r", 3: "c", 4: "c", 5: "f"}),  # LVIS: edges 10 | 11 and 100 | 101
        (11, 99, {1: "r", 2: "r", 3: "r", 4: "f", 5: "f"}),
        (0, 10, {1: "r", 2: "c", 3: "f", 4: "f", 5: "f"}),
        (10, 10, {1: "r", 2: "r", 3: "f", 4: "f", 5: "f"}),
    ],
)
def test_buckets_by_training_images(rare_max, common_max, expected):
    assert category_buckets(training_set(), rare_max, common_max) == expected
    assert {c: bucket_of(n, rare_max, common_max) for c, n in COUNTS.items()} == expected


def test_frequency_field_takes_precedence():
    coco = training_set(frequency={1: "f", 5: "r"})
    assert category_buckets(coco) == {1: "f", 2: "r", 3: "c", 4: "c", 5: "r"}
    with pytest.raises(FrostError, match=r"categories\[id=2\]\.frequency"):
        category_buckets(training_set(frequency={2: "rare"}))


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="rare_max"):
        category_buckets(training_set(), rare_max=50, common_max=10)


# ------------------------------------------------------------------------------------------------ files
def test_write_eval_files(tmp_path, capsys, three_scales):
    gt, perfect, buckets = three_scales
    detections = perfect + [{**det(4, 2, FAR, np.float32(0.25))}]
    result = evaluate_quietly(capsys, gt, detections, buckets)  # train_counts omitted: train_images None
    out = tmp_path / "eval" / "epoch-0001"
    write_eval_files(result, detections, out)

    assert sorted(p.name for p in out.iterdir()) == [
        "detections.json",
        "metrics.json",
        "per_class_ap.csv",
        "per_class_ap.json",
    ]
    assert json.loads((out / "metrics.json").read_text()) == result.metrics
    assert json.loads((out / "per_class_ap.json").read_text()) == result.per_class
    saved = json.loads((out / "detections.json").read_text())
    assert len(saved) == 5 and saved[-1]["score"] == pytest.approx(0.25) and saved[0]["bbox"] == SMALL
    with (out / "per_class_ap.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["category_id"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == list(PER_CLASS_KEYS)
    assert float(rows[1]["AP"]) == pytest.approx(per_class(result)[2]["AP"])
    assert rows[2]["bucket"] == "f" and rows[2]["train_images"] == "" and rows[2]["name"] == "class3"
