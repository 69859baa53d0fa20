"""Frozen vs fine-tuned at equal head capacity: step time, images/s, peak memory, trainable parameters.

ResNet-18 FPN Faster R-CNN, 128 px, batch 8, on this machine's device (CPU here). Each mode runs `frost train`
in its own process, so peak memory (CUDA max allocated, or peak RSS on CPU) is that mode's alone; the modes
alternate over --repeats rounds so machine load hits both alike. Weights do not change speed, so `none` is used
(no pretraining needed).

    python benchmarks/frozen_vs_finetune.py [--images 96] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("frozen", "partial:2", "finetune")
COLUMNS = ("step_time_s", "images_per_s", "peak_memory_mb", "trainable_params", "total_params")


def run_mode(mode: str, args: argparse.Namespace, home: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "service.cli", "train", "--out", out,
            "--set", f"backbone.freeze={mode}",
            "--set", "backbone.weights=none",
            "--set", "detector=faster_rcnn",
            "--set", "backbone.name=resnet18",
            "--set", "input.image_size=128",
            "--set", "train.batch_size=8",
            "--set", f"train.epochs={args.epochs}",
            "--set", f"data.limit_train={args.images}",
            "--set", "data.limit_val=16",
            "--set", f"eval.every={args.epochs}",
        ]  # fmt: skip
        env = {**os.environ, "FROST_HOME": str(home)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            sys.exit(f"{mode}: frost train failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    home = Path(os.environ.get("FROST_HOME", "frost-runs")).resolve()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.repeats):
        for mode in MODES:
            print(f"round {round_ + 1}/{args.repeats}: {mode} ...", file=sys.stderr, flush=True)
            runs[mode].append(run_mode(mode, args, home))

    table = {mode: {c: statistics.median(r[c] for r in rows) for c in COLUMNS} for mode, rows in runs.items()}
    base = table["finetune"]
    print(f"\nResNet-18 FPN Faster R-CNN, 128 px, batch 8, {args.images} images x {args.epochs} epochs, "
          f"median of {args.repeats} runs per mode")  # fmt: skip
    header = f"{'mode':<10} {'step s':>8} {'img/s':>8} {'peak MB':>9} {'trainable':>11} {'total':>11}"
    print(header + f"   {'step/ft':>8} {'img/s/ft':>8} {'mem/ft':>7} {'train/ft':>8}")
    for mode, row in table.items():
        print(
            f"{mode:<10} {row['step_time_s']:>8.3f} {row['images_per_s']:>8.1f} {row['peak_memory_mb']:>9.0f} "
            f"{int(row['trainable_params']):>11,} {int(row['total_params']):>11,}   "
            f"{row['step_time_s'] / base['step_time_s']:>8.2f} {row['images_per_s'] / base['images_per_s']:>8.2f} "
            f"{row['peak_memory_mb'] / base['peak_memory_mb']:>7.2f} "
            f"{row['trainable_params'] / base['trainable_params']:>8.2f}"
        )


if __name__ == "__main__":
    main()
