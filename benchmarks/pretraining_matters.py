"""Does the default trial learn, and does the classifier initialisation matter? One table, one run.

Rows: the default model untrained (builtin classifier weights, no detector training), the default trial
(frozen builtin classifier), the same frozen on random weights, and fine-tuned from the builtin classifier.
Each trial runs `frost train` in its own process on the default built-in long-tail data.

    python benchmarks/pretraining_matters.py [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from trainers.config import TrialSpec
from trainers.data import load_datasets
from trainers.engine import predict
from trainers.evaluate import category_buckets, evaluate_detections, train_image_counts
from trainers.models import build_detector
from trainers.train import seed_everything

ROWS = {
    "frozen, builtin weights (default)": [],
    "frozen, random weights": ["backbone.weights=none"],
    "finetune, builtin weights": ["backbone.freeze=finetune"],
}
KEYS = ("AP", "AP50", "AP_r", "AP_c", "AP_f")


def untrained() -> dict[str, float]:
    spec = TrialSpec()
    seed_everything(spec.seed)
    train, val = load_datasets(spec.data)
    model = build_detector(spec, train.categories.num_classes)
    detections = predict(spec, model, val, torch.device("cpu"))
    buckets = category_buckets(train.coco, spec.eval.rare_max, spec.eval.common_max)
    result = evaluate_detections(val.coco, detections, buckets, train_image_counts(train.coco), val.image_ids)
    return result.metrics


def trained(overrides: list[str], epochs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "service.cli",
            "train",
            "--out",
            out,
            "--set",
            f"train.epochs={epochs}",
        ]
        for item in overrides:
            command += ["--set", item]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)
        if done.returncode != 0:
            sys.exit(f"frost train {overrides} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrialSpec().train.epochs)
    args = parser.parse_args()
    table = {"untrained (builtin weights, 0 epochs)": untrained()}
    for name, overrides in ROWS.items():
        print(f"training: {name} ...", file=sys.stderr, flush=True)
        table[name] = trained(overrides, args.epochs)
    print(
        f"\nDefault trial (Faster R-CNN R18-FPN, 128 px) on the built-in long-tail data, {args.epochs} epochs"
    )
    print(f"{'':<40}" + "".join(f"{k:>8}" for k in KEYS) + f"{'img/s':>8}")
    for name, row in table.items():
        cells = "".join(f"{row[k]:>8.3f}" for k in KEYS)
        print(f"{name:<40}{cells}{row.get('images_per_s', float('nan')):>8.1f}")


if __name__ == "__main__":
    main()
