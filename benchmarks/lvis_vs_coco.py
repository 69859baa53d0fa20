"""How much does the evaluation protocol move AP_r? One trained model, one set of detections, three scorings.

Trains one small detector on the built-in long-tail data in LVIS format (the same images and boxes as the
COCO format, plus each image's verified-absent and not-exhaustive category lists), then scores its final
detections on the val split three ways:
- coco @100: plain COCOeval, as frost scored every data set before LVIS support;
- coco @300: the same with LVIS's detection budget, to separate the budget from the federated rules;
- lvis @300: LVIS's federated rules (docs/evaluation.md).
Also counts the val detections by the kind of (image, category) pair they fall on: unverified (LVIS drops
them), negative (false positives under both), not exhaustive (LVIS ignores the unmatched ones).

    FROST_HOME=/tmp/frost-bench python benchmarks/lvis_vs_coco.py [--epochs 4] [--image-size 64] [--limit-train 160]

With --weights none the backbone trains from random initialisation (fine-tuned); with a classifier (builtin,
or a checkpoint of `frost pretrain --out`) it stays frozen. Measured figures: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from trainers.config import TrialSpec
from trainers.data import load_datasets
from trainers.evaluate import category_buckets, evaluate_detections, train_image_counts
from trainers.train import run_trial

KEYS = ("AP", "AP50", "AP_r", "AP_c", "AP_f", "AR")
SCORINGS = {"coco @100": ("coco", 100), "coco @300": ("coco", 300), "lvis @300": ("lvis", 300)}


def trial_spec(args: argparse.Namespace) -> TrialSpec:
    return TrialSpec.model_validate(
        {
            # Buckets come from the categories' `frequency`, counted on the full train split of 320 images.
            "data": {
                "synth": {"format": "lvis", "image_size": args.image_size},
                "limit_train": args.limit_train,
            },
            "input": {"image_size": args.image_size},
            # No pretraining step (minutes on 2 cores): random initialisation, so the backbone trains too.
            "backbone": {
                "weights": args.weights,
                "freeze": "finetune" if args.weights == "none" else "frozen",
            },
            "train": {"epochs": args.epochs, "device": "cpu"},
            "eval": {"every": args.epochs, "protocol": "lvis"},
        }
    )


def set_aside(val_coco: Any, detections: list[dict[str, Any]]) -> dict[str, int]:
    """Detections on unverified pairs (dropped by LVIS) and on not-exhaustive pairs (unmatched ones ignored)."""
    positive: dict[int, set[int]] = defaultdict(set)
    for ann in val_coco.dataset["annotations"]:
        positive[ann["image_id"]].add(ann["category_id"])
    counts = {"detections": len(detections), "unverified": 0, "not_exhaustive": 0, "negative": 0}
    for det in detections:
        image = val_coco.imgs[det["image_id"]]
        category = det["category_id"]
        if category in image["not_exhaustive_category_ids"]:
            counts["not_exhaustive"] += 1
        if category in image["neg_category_ids"]:
            counts["negative"] += 1
        elif category not in positive[det["image_id"]]:
            counts["unverified"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--limit-train", type=int, default=160, help="train images used (of 320)")
    parser.add_argument(
        "--weights",
        default="none",
        help="backbone.weights: none (default), builtin, or a classifier checkpoint",
    )
    args = parser.parse_args()

    spec = trial_spec(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_trial(spec, Path(out))
        detections = json.loads(
            (Path(out) / "eval" / f"epoch-{args.epochs:04d}" / "detections.json").read_text()
        )
    train_seconds = time.perf_counter() - start
    train, val = load_datasets(spec.data)
    buckets = category_buckets(train.coco)
    counts = train_image_counts(train.coco)

    rows = {}
    for name, (protocol, cap) in SCORINGS.items():
        result = evaluate_detections(val.coco, detections, buckets, counts, val.image_ids, protocol, cap)
        rows[name] = {**result.metrics, "AR": result.metrics[f"AR{cap}"]}

    classes = {bucket: sum(1 for b in buckets.values() if b == bucket) for bucket in "rcf"}
    print(
        f"\n{len(train)} train / {len(val)} val images at {args.image_size} px, {len(buckets)} classes "
        f"(rare {classes['r']}, common {classes['c']}, frequent {classes['f']}); {spec.detector} "
        f"{spec.backbone.name} weights={spec.backbone.weights} freeze={spec.backbone.freeze}, "
        f"{args.epochs} epochs ({train_seconds:.0f} s)"
    )
    print(f"val detections: {set_aside(val.coco, detections)}\n")
    print(f"{'scoring':<11}" + "".join(f"{key:>8}" for key in KEYS))
    for name, metrics in rows.items():
        print(f"{name:<11}" + "".join(f"{metrics[key]:8.4f}" for key in KEYS))
    lvis, coco = rows["lvis @300"], rows["coco @100"]
    print(f"{'lvis - coco':<11}" + "".join(f"{lvis[key] - coco[key]:+8.4f}" for key in KEYS))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
