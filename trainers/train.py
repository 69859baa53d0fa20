"""One trial, top to bottom: data → model → epochs (train, evaluate, checkpoint, report) → final metrics.

A trial directory holds `trial.yaml`, `checkpoints/epoch-NNNN/` (model, optimizer, scheduler, scaler, RNG
states, history), `eval/epoch-NNNN/` (metrics, per-class AP, detections) and `metrics.jsonl`. Starting a trial
on a directory that holds checkpoints resumes from the newest one; the resumed run ends with the metrics of an
uninterrupted one, because every random draw comes from a saved or per-epoch-seeded generator.

Inside a `torch.distributed` process group the same trial runs data-parallel: each worker trains on its
share of every global batch, rank 0 writes the files, and every worker reports the same metrics
(trainers/distributed.py, docs/distributed.md).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.checkpoints import (
    checkpoint_dirs,
    load_checkpoint,
    read_checkpoint,
    record_attempt,
    record_failure,
    refuse_failed_trial,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainers.config import TrialSpec, dump_trial_spec
from trainers.distributed import World, worker_seed
from trainers.engine import Learner, TrialData, evaluate_epoch, train_one_epoch
from trainers.errors import FrostError, TrainingError
from trainers.features import prepare_feature_cache
from trainers.logs import log
from trainers.measures import TrialMeasures, across_workers, begin_trial, peak_memory_mb, start_peak_memory
from trainers.models import count_parameters
from trainers.reporting import JsonLinesReporter, NullReporter, Reporter


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FrostError("train.device: cuda requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(seed: int, world: World, epoch: int) -> None:
    """Ranks > 0 draw their own RPN / RoI samples: all ranks built the model from `seed`, so a rank > 0 moves
    its global generators to a stream of its own before training from `epoch` on. Rank 0 keeps the stream
    a one-process trial has."""
    if not world.main:
        seed_everything(worker_seed(seed, world.rank, epoch))


def restore_rng(state: dict[str, Any], seed: int, world: World) -> None:
    """Every rank continues its saved RNG stream when the checkpoint has one per rank of this world size
    (`worker_rng`); otherwise rank 0 continues rank 0's and the others re-derive theirs (`seed_worker`)."""
    saved = state.get("worker_rng") or [state["rng"]]
    if len(saved) == world.size:
        set_rng_state(saved[world.rank])
        return
    set_rng_state(state["rng"])
    seed_worker(seed, world, state["epoch"] + 1)


def check_world(spec: TrialSpec, world: World, train_images: int) -> None:
    """The global batch must give every worker at least one image (docs/distributed.md)."""
    if world.size > min(spec.train.batch_size, train_images):
        raise FrostError(
            f"train.batch_size: the global batch of {spec.train.batch_size} images ({train_images} training "
            f"images) cannot give each of {world.size} workers an image"
        )


# ---------------------------------------------------------------------------------------------- the trial
def prepare_trial_dir(spec: TrialSpec, out_dir: Path) -> None:
    """A trial directory belongs to one spec: resuming someone else's checkpoints would be silent nonsense."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = out_dir / "trial.yaml"
    if spec_file.exists() and checkpoint_dirs(out_dir):
        from trainers.config import load_trial_spec

        previous = load_trial_spec(spec_file)
        # cache.* changes how, not what, a trial computes (docs/feature-cache.md): a resume may flip it.
        same: dict[str, Any] = {"train": {"epochs"}, "cache": True}
        if previous.model_dump(exclude=same) != spec.model_dump(exclude=same):
            raise FrostError(
                f"--out {out_dir}: holds checkpoints of a different trial ({spec_file}); use another directory"
            )
    dump_trial_spec(spec, spec_file)


def agreed_checkpoint(
    out_dir: Path, resume_from: Path | None, device: torch.device, world: World
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint every rank resumes from: rank 0 picks the newest readable one, the others load it."""
    picked: list[tuple[Path, dict[str, Any]] | None] = []

    def pick() -> Path | None:
        picked.append(load_checkpoint(out_dir, resume_from, device))
        return picked[0][0] if picked[0] else None

    path = world.on_main(pick)  # only the path travels: a checkpoint's state may be large
    if path is None:
        return None
    return picked[0] if picked else (path, read_checkpoint(path, device))


def _open_trial_dir(spec: TrialSpec, out_dir: Path) -> None:
    prepare_trial_dir(spec, out_dir)
    refuse_failed_trial(out_dir)


def run_trial(
    spec: TrialSpec,
    out_dir: Path,
    reporter: Reporter | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one trial; returns the final epoch's metrics (plus `epochs`, `cache_used`).

    Starting again on the same `out_dir` resumes from its newest readable checkpoint (or `resume_from`), and
    the reporter is told so once (`reporter.resume`) before training goes on.

    Called on every rank of an initialised `torch.distributed` process group (one process per rank, the
    CUDA device of each set by its caller), the trial trains data-parallel: `train.batch_size` is the
    global batch, rank 0 writes the trial's files, and every rank returns (and reports) the same metrics.
    The default reporter writes `metrics.jsonl` on rank 0 and nothing on the others.
    Every epoch's metrics carry `trials_in_process`: 1 when the process started for this trial, n when it
    ran n - 1 trials before (its imports and warm-up were paid by the first).
    """
    in_process = begin_trial()  # process reuse: trainers/measures.py
    out_dir = Path(out_dir)
    world = World.current()
    world.on_main(lambda: _open_trial_dir(spec, out_dir))
    reporter = reporter or (JsonLinesReporter(out_dir / "metrics.jsonl") if world.main else NullReporter())
    seed_everything(spec.seed)  # on every rank: the same initial weights everywhere
    device = resolve_device(spec.train.device)
    data = TrialData.load(spec)
    check_world(spec, world, len(data.train))
    learner = Learner.build(spec, data, device, world)
    seed_worker(spec.seed, world, 1)
    trainable, total = count_parameters(learner.model)
    measures = TrialMeasures.of(learner.model, device)  # after data and model: train_memory_mb's baseline

    history: list[dict[str, Any]] = []
    loaded = agreed_checkpoint(out_dir, resume_from, device, world)
    if loaded is not None:
        checkpoint, state = loaded
        learner.load(state)
        restore_rng(state, spec.seed, world)
        history = state["history"]
        log.info(f"resuming {out_dir} from {checkpoint.name} (epoch {state['epoch']} done)")
        reporter.resume(history, checkpoint)
    start_epoch = history[-1]["epoch"] + 1 if history else 1
    world.on_main(lambda: record_attempt(out_dir, start_epoch - 1))
    cache, cache_report = prepare_feature_cache(spec, learner.model, data.train, data.val)
    log.info(
        f"trial: {spec.detector} {spec.backbone.name} freeze={spec.backbone.freeze} on {device}; "
        f"{len(data.train)} train / {len(data.val)} val images, {data.train.categories.num_classes} classes; "
        f"{trainable:,} of {total:,} parameters trainable; {data.protocol} evaluation, "
        f"{data.max_detections} per image; {world.size} worker(s), global batch {spec.train.batch_size}"
    )

    start_peak_memory(device)
    for epoch in range(start_epoch, spec.train.epochs + 1):
        metrics: dict[str, Any] = {"epoch": epoch, "trials_in_process": in_process}
        try:
            metrics.update(train_one_epoch(spec, learner, data.train, epoch, device, cache, world))
        except TrainingError as exc:  # raised on every rank at the same step (global_loss)
            if world.main:
                record_failure(out_dir, epoch, str(exc))
            raise
        metrics.update(measures.epoch_metrics(peak_memory_mb(device)))
        metrics.update(cache_report.metrics())
        metrics = across_workers(metrics, world)
        if epoch % spec.eval.every == 0 or epoch == spec.train.epochs:
            metrics.update(evaluate_epoch(spec, learner.model, data, epoch, device, cache, out_dir, world))
        history.append(metrics)
        checkpoint_dir = save_epoch(spec, learner, epoch, history, out_dir, world)
        reporter.report(epoch, metrics, checkpoint_dir if world.main else None)
    return {**final_metrics(history), "cache_used": cache is not None}


def save_epoch(
    spec: TrialSpec, learner: Learner, epoch: int, history: list[dict[str, Any]], out_dir: Path, world: World
) -> Path:
    """Rank 0 writes the epoch's checkpoint with every rank's RNG state; no rank goes on before it is on disk
    (or before learning that the save failed)."""
    worker_rng = world.gather(rng_state())
    state = learner.state(spec, epoch, history, worker_rng)
    return world.on_main(lambda: save_checkpoint(out_dir, epoch, state, spec.train.keep_checkpoints))


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's figures, with evaluation figures from the last evaluated epoch."""
    final: dict[str, Any] = {}
    for record in history:
        final.update(record)
    final["epochs"] = history[-1]["epoch"] if history else 0
    return final
