"""The seam between the training loop and whoever listens (JSON lines standalone, Ray Tune in a sweep).

The loop calls `reporter.report(epoch, metrics, checkpoint_dir)` once per epoch, after the epoch's
checkpoint is on disk, and `reporter.resume(history, checkpoint_dir)` once when a trial restarts from a
checkpoint. It knows nothing else of its listener: what a listener does on resume (rewrite its file, replay
epochs it never received) is the listener's policy, as detectron2's hooks keep policy out of its loop.

A data-parallel trial (trainers/distributed.py) calls both on every rank, with the same metrics and history
on every rank: `report` gets the real `checkpoint_dir` on rank 0 only and None on the other ranks (rank 0
alone writes checkpoints); `resume` gets the checkpoint every rank resumed from, on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

# Metric names every epoch's report carries (evaluation keys are present on evaluated epochs; the
# loop evaluates the last epoch always). Sweeps validate their scheduler metric against this list.
# AR<cap> names the per-image detection cap: AR100 under the COCO protocol, AR300 under LVIS
# (docs/evaluation.md); an evaluated epoch carries one of the two.
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR300", "AP_r", "AP_c", "AP_f")
TRAIN_METRICS = (
    "epoch",
    "loss",
    "lr",
    "images_per_s",
    "step_time_s",
    "epoch_time_s",
    "peak_memory_mb",  # summed over a data-parallel trial's workers, as are images_per_s and train_memory_mb
    "peak_memory_mb_worker_max",  # the largest worker's peak_memory_mb (= peak_memory_mb for one worker)
    "workers",  # the trial's data-parallel workers (1 for one process); step and epoch times are the slowest's
    "trainable_params",
    "total_params",
    "cache_used",  # 1 when the frozen prefix's features came from the feature cache (trainers/features.py)
    "cache_build_s",  # seconds this trial spent building the cache (0 when it read an existing one)
    "cache_bytes",  # bytes this trial wrote into the cache
)
REPORTED_METRICS = TRAIN_METRICS + EVAL_METRICS


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """`checkpoint_dir` is None when an epoch is reported again after a resume, and on every rank but 0 of
        a data-parallel trial (the same `metrics` on every rank)."""

    def resume(self, history: list[dict[str, Any]], checkpoint_dir: Path) -> None:
        """The trial restarts after `history[-1]["epoch"]`, from `checkpoint_dir`; `history` is every epoch's
        metrics so far, as the checkpoint holds them (on every rank of a data-parallel trial)."""


class ReplayingReporter:
    """A listener that may have missed epochs (its process died between a checkpoint and the report):
    on resume it is sent again every epoch after `reported_up_to`, the newest with its checkpoint. It must
    drop what it already has (Ray Tune does, by epoch)."""

    def __init__(self, reported_up_to: int = 0) -> None:
        self.reported_up_to = reported_up_to

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        raise NotImplementedError

    def resume(self, history: list[dict[str, Any]], checkpoint_dir: Path) -> None:
        replay = [record for record in history if record["epoch"] > self.reported_up_to]
        for record in replay:
            self.report(record["epoch"], record, checkpoint_dir if record is replay[-1] else None)


class JsonLinesReporter:
    """Standalone runs: one JSON object per epoch appended to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        record = {"epoch": epoch, **metrics, "checkpoint": str(checkpoint_dir) if checkpoint_dir else None}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def resume(self, history: list[dict[str, Any]], checkpoint_dir: Path) -> None:
        # The file equals the checkpoint's history again: no epoch listed twice after a resume.
        self.path.write_text("".join(json.dumps(record) + "\n" for record in history))


class NullReporter:
    """The ranks but 0 of a data-parallel trial run standalone: rank 0's reporter writes for the trial."""

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        pass

    def resume(self, history: list[dict[str, Any]], checkpoint_dir: Path) -> None:
        pass
