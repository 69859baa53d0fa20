"""The seam between the training loop and whoever listens (JSON lines standalone, Ray Tune in a sweep).

The loop calls `reporter.report(epoch, metrics, checkpoint_dir)` once per epoch, after the epoch's
checkpoint is on disk. It knows nothing else of its listener.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

# Metric names every epoch's report carries (evaluation keys are present on evaluated epochs; the
# loop evaluates the last epoch always). Sweeps validate their scheduler metric against this list.
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AP_r", "AP_c", "AP_f")
TRAIN_METRICS = (
    "epoch",
    "loss",
    "lr",
    "images_per_s",
    "step_time_s",
    "epoch_time_s",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "cache_used",  # 1 when the frozen prefix's features came from the feature cache (trainers/features.py)
    "cache_build_s",  # seconds this trial spent building the cache (0 when it read an existing one)
    "cache_bytes",  # bytes this trial wrote into the cache
)
REPORTED_METRICS = TRAIN_METRICS + EVAL_METRICS


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """`checkpoint_dir` is None only when an epoch is reported again after a resume (see run_trial)."""


class JsonLinesReporter:
    """Standalone runs: one JSON object per epoch appended to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        record = {"epoch": epoch, **metrics, "checkpoint": str(checkpoint_dir) if checkpoint_dir else None}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
