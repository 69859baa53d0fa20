"""How does one trial scale from 1 to 2 data-parallel workers? `frost train --workers N` (torch.distributed,
gloo on CPU) on the same trial and the same GLOBAL batch, side by side in one run: images/s over all workers,
scaling efficiency (speed-up / N), epoch time, and whether the final metrics agree.

    python benchmarks/ddp_scaling.py [--images 96] [--epochs 2] [--size 96] [--batch 8]

Caveat, printed with the table: on a 2-core machine two workers share two cores with each other (and each
worker's intra-op threads are cut to 1 so they do not fight), so this measures the overhead of gradient
averaging and sharding on CPU, not the scaling a GPU per worker would give.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _train(workers: int, out: Path, overrides: list[str], threads: int) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "service.cli", "train", "--out", str(out), "--workers", str(workers)]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"frost train --workers {workers} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96, help="training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=96, help="image size (px)")
    parser.add_argument("--batch", type=int, default=8, help="GLOBAL batch, the same for every N")
    args = parser.parse_args()
    overrides = [
        f"data.synth.train_images={args.images}",
        "data.synth.val_images=16",
        f"data.synth.image_size={args.size}",
        f"input.image_size={args.size}",
        "backbone.weights=none",
        "backbone.freeze=finetune",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.device=cpu",
        "eval.every=1000",  # the last epoch only: this measures training
    ]
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="frost-ddp-"))
    os.environ.setdefault("FROST_HOME", str(root / "home"))
    rows = []
    for workers in (1, 2):
        threads = max(cores // workers, 1)  # the same cores in all, split between the workers
        metrics, wall = _train(workers, root / f"w{workers}", overrides, threads)
        rows.append((workers, threads, metrics, wall))
        print(
            f"workers={workers} threads/worker={threads}: {metrics['images_per_s']:.1f} img/s, {wall:.0f} s"
        )

    base = rows[0][2]["images_per_s"]
    print(
        f"\none trial, {args.images} images x {args.epochs} epochs at {args.size} px, global batch {args.batch}"
    )
    print(
        f"{'workers':>7} {'threads':>7} {'img/s':>8} {'speed-up':>9} {'efficiency':>10} {'epoch s':>8} "
        f"{'loss':>7} {'AP':>7} {'wall s':>7}"
    )
    for workers, threads, m, wall in rows:
        speedup = m["images_per_s"] / base
        print(
            f"{workers:>7} {threads:>7} {m['images_per_s']:>8.1f} {speedup:>9.2f} {speedup / workers:>10.2f} "
            f"{m['epoch_time_s']:>8.1f} {m['loss']:>7.3f} {m['AP']:>7.4f} {wall:>7.0f}"
        )
    print(
        f"\ncaveat: {cores} CPU cores shared by every worker; this is the cost of DDP's sharding and gradient "
        "averaging on CPU (gloo), not GPU scaling, where each worker has a device of its own."
    )


if __name__ == "__main__":
    main()
