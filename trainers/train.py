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

import gc
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainers.checkpoints import (
    CHECKPOINT_FILE,
    checkpoint_dirs,
    load_checkpoint,
    read_attempts,
    read_checkpoint,
    record_attempt,
    record_failure,
    refuse_failed_trial,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainers.config import TrialSpec, dump_trial_spec
from trainers.data import CocoDetection, collate, hflip, load_datasets
from trainers.distributed import World, data_parallel, sync_batchnorm, worker_seed
from trainers.errors import FrostError, TrainingError
from trainers.evaluate import category_buckets, evaluate_detections, train_image_counts, write_eval_files
from trainers.features import FeatureCache, detector_parts, prepare_feature_cache
from trainers.federated import max_detections_of, resolve_protocol
from trainers.logs import log
from trainers.measures import TrialMeasures, across_workers, peak_rss_mb, release_heap, start_peak_rss
from trainers.models import build_detector, count_parameters
from trainers.reporting import JsonLinesReporter, NullReporter, Reporter

__all__ = ["CHECKPOINT_FILE", "checkpoint_dirs", "read_attempts", "run_trial"]  # imported from here by tests


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


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Order and flips of one epoch depend on (seed, epoch) only, so a resumed epoch sees the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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


# ---------------------------------------------------------------------------------------------- batches
def epoch_items(spec: TrialSpec, count: int, epoch: int) -> list[tuple[int, bool]]:
    """The epoch's (image index, flip) pairs in training order."""
    gen = epoch_generator(spec.seed, epoch)
    order = torch.randperm(count, generator=gen).tolist()
    flips = (torch.rand(count, generator=gen) < spec.input.hflip).tolist()
    return [(i, flips[n]) for n, i in enumerate(order)]


def global_batches(count: int, batch_size: int, world: World) -> list[list[int]]:
    """Positions in the epoch's order, one list per global batch of `train.batch_size` images.

    A last batch with fewer images than workers is left out: every rank steps together (DDP averages the
    gradients of all ranks), and a rank cannot step on no image. With one worker nothing is left out.
    """
    batches = [list(range(s, min(s + batch_size, count))) for s in range(0, count, batch_size)]
    return [batch for batch in batches if len(batch) >= world.size]


def check_world(spec: TrialSpec, world: World, train_images: int) -> None:
    """The global batch must give every worker at least one image (docs/distributed.md)."""
    if world.size > min(spec.train.batch_size, train_images):
        raise FrostError(
            f"train.batch_size: the global batch of {spec.train.batch_size} images ({train_images} training "
            f"images) cannot give each of {world.size} workers an image"
        )


# ---------------------------------------------------------------------------------------------- optimisation
def build_optimizer(spec: TrialSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    # Frozen parameters are never handed to the optimizer (no weight decay drift, no momentum buffers).
    params = [p for p in model.parameters() if p.requires_grad]
    o = spec.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(spec: TrialSpec, step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine / step / constant, as a multiplier of optim.lr."""
    o = spec.optim
    warmup = min(o.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    if o.schedule == "cosine":
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if o.schedule == "step":
        return o.gamma ** sum(step >= m * total_steps for m in o.milestones)
    return 1.0


# ---------------------------------------------------------------------------------------------- measuring
def start_peak_memory(device: torch.device) -> None:
    """From here on, `peak_memory_mb` is this trial's: the process may have run other trials before it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # a previous trial's cached blocks would count against a shared GPU
        torch.cuda.reset_peak_memory_stats(device)
    start_peak_rss()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()  # the process's peak resident set, the CPU analogue of max allocated


# ---------------------------------------------------------------------------------------------- epochs
def train_one_epoch(
    spec: TrialSpec,
    learner: _Learner,
    dataset: CocoDetection,
    epoch: int,
    device: torch.device,
    cache: FeatureCache | None = None,
    world: World = World(),
) -> dict[str, float]:
    """One epoch on this rank's share of every global batch; `loss` is the global batches' mean, the timing
    figures are this rank's (`across_workers` makes them the trial's)."""
    learner.step_model.train()
    items = epoch_items(spec, len(dataset), epoch)
    batches = global_batches(len(items), spec.train.batch_size, world)
    loader: DataLoader[tuple[int, bool]] = DataLoader(
        items,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_sampler=[world.shard(batch) for batch in batches],
        collate_fn=lambda chosen: _load_batch(dataset, chosen, pixels=cache is None),
        num_workers=spec.train.workers,
    )
    steps = len(batches)
    losses, step_times, images_seen = [], [], 0
    start = time.perf_counter()
    for step, ((images, targets, flipped), batch) in enumerate(zip(loader, batches), start=1):
        t0 = time.perf_counter()
        if cache is not None:
            cache.select("train", [int(t["image_id"]) for t in targets], flipped)
        images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        where = f"epoch {epoch} step {step}/{steps}"
        share = len(images) * world.size / len(batch)
        losses.append(train_step(spec, learner, images, targets, device, where, world, share))
        step_times.append(time.perf_counter() - t0)
        images_seen += len(images)
        if step % spec.train.log_every == 0 or step == steps:
            rate = images_seen / (time.perf_counter() - start)
            log.info(
                f"epoch {epoch}/{spec.train.epochs} step {step}/{steps} loss {np.mean(losses[-10:]):.3f} "
                f"lr {learner.optimizer.param_groups[0]['lr']:.4f} {rate:.1f} img/s"
            )
    elapsed = time.perf_counter() - start
    return {
        "loss": float(np.mean(losses)),
        "lr": float(learner.optimizer.param_groups[0]["lr"]),
        "images_per_s": images_seen / elapsed,
        "step_time_s": float(np.mean(step_times)),
        "epoch_time_s": elapsed,
    }


def train_step(
    spec: TrialSpec,
    learner: _Learner,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    device: torch.device,
    where: str,
    world: World = World(),
    share: float = 1.0,
) -> float:
    """One optimisation step (AMP on CUDA, optional clipping); returns the global batch's loss. A non-finite
    loss is a TrainingError (on every rank, whichever rank's loss it was).

    `share` is this rank's images times the world size over the global batch's images: DDP averages the
    ranks' gradients, and the weight makes that the mean over the global batch's images when the shares
    are uneven (1 when they are even, and for one worker).
    """
    optimizer, scaler = learner.optimizer, learner.scaler
    with torch.autocast(device_type=device.type, enabled=spec.train.amp and device.type == "cuda"):
        loss_dict = learner.step_model(images, targets)
        loss = sum(loss_dict.values())
    value = global_loss(loss, loss_dict, len(images), where, world)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * share).backward()
    if spec.optim.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], spec.optim.grad_clip
        )
    scaler.step(optimizer)
    scaler.update()
    learner.scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value


def global_loss(
    loss: torch.Tensor, loss_dict: dict[str, torch.Tensor], images: int, where: str, world: World
) -> float:
    """The loss of the global batch: the ranks' losses weighted by their images (one gather per step, which
    also tells every rank whether any rank's loss is non-finite, so all stop at the same step)."""
    value = float(loss.item())
    bad = None if math.isfinite(value) else ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
    shares = world.gather((value, images, bad))
    for rank, (_, _, parts) in enumerate(shares):
        if parts is not None:
            worker = f" on worker {rank}" if world.distributed else ""
            raise TrainingError(f"non-finite loss at {where}{worker} ({parts})")
    total = sum(n for _, n, _ in shares)
    return sum(v * (n / total) for v, n, _ in shares)  # n / total is exactly 1.0 for one worker


def _load_batch(
    dataset: CocoDetection, items: list[tuple[int, bool]], pixels: bool = True
) -> tuple[list, list, list[bool]]:
    """Images (blank ones of the right size unless `pixels`: the cache stands in for them), targets, flips."""
    pairs = []
    for index, flip in items:
        image, target = dataset[index] if pixels else dataset.blank(index)
        pairs.append(hflip(image, target) if flip else (image, target))
    return (*collate(pairs), [flip for _, flip in items])


@torch.no_grad()
def predict(
    spec: TrialSpec,
    model: torch.nn.Module,
    dataset: CocoDetection,
    device: torch.device,
    cache: FeatureCache | None = None,
    indices: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Detections on a split (on the images at `indices`, default all) in COCO results format (dataset
    category ids, xywh boxes)."""
    model.eval()
    loader: DataLoader[int] = DataLoader(
        range(len(dataset)) if indices is None else indices,  # type: ignore[arg-type]  # map-style datasets
        batch_size=spec.eval.batch_size,
        collate_fn=lambda idx: _load_batch(dataset, [(i, False) for i in idx], pixels=cache is None)[:2],
        num_workers=spec.train.workers,
    )
    use_amp = spec.train.amp and device.type == "cuda"
    detections = []
    for images, targets in loader:
        images = [img.to(device).float().div_(255) for img in images]
        if cache is not None:
            cache.select("val", [int(t["image_id"]) for t in targets], [False] * len(targets))
        with torch.autocast(device_type=device.type, enabled=use_amp):
            outputs = model(images)
        for target, out in zip(targets, outputs):
            boxes = out["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for box, label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                detections.append(
                    {
                        "image_id": int(target["image_id"]),
                        "category_id": dataset.categories.category(int(label)),
                        "bbox": [round(v, 2) for v in box],
                        "score": round(float(score), 5),
                    }
                )
    return detections


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


@dataclass
class _Data:
    """What a trial reads: the two splits and how it is scored."""

    train: CocoDetection
    val: CocoDetection
    buckets: dict[int, str]
    counts: dict[int, int]
    protocol: str
    max_detections: int

    @classmethod
    def load(cls, spec: TrialSpec) -> _Data:
        train_set, val_set = load_datasets(spec.data)
        if len(train_set) == 0:
            raise FrostError(f"{train_set.annotation_file}: no training images")
        protocol = resolve_protocol(spec.eval.protocol, val_set.coco, val_set.annotation_file)
        return cls(
            train_set,
            val_set,
            category_buckets(train_set.coco, spec.eval.rare_max, spec.eval.common_max),
            train_image_counts(train_set.coco),
            protocol,
            max_detections_of(protocol, spec.eval.max_detections),
        )


@dataclass
class _Learner:
    """What a trial trains and checkpoints: the model and everything that steps with it.

    `step_model` is what a training step calls: the model itself, or DDP around it with several workers.
    Everything else (checkpoints, evaluation, the feature cache) uses `model`, the unwrapped module.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step_model: torch.nn.Module

    @classmethod
    def build(cls, spec: TrialSpec, data: _Data, device: torch.device, world: World = World()) -> _Learner:
        model_spec = spec.with_detection_cap(
            data.max_detections
        )  # LVIS scores 300 per image: docs/evaluation.md
        model = build_detector(model_spec, data.train.categories.num_classes).to(device)
        model = sync_batchnorm(model, device, world)
        optimizer = build_optimizer(spec, model)
        steps = len(global_batches(len(data.train), spec.train.batch_size, world))
        total_steps = steps * spec.train.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(spec, s, total_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=spec.train.amp and device.type == "cuda")
        return cls(model, optimizer, scheduler, scaler, data_parallel(model, device, world))

    def state(
        self, spec: TrialSpec, epoch: int, history: list[dict[str, Any]], worker_rng: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """`rng` is rank 0's RNG state (the one-process trial's), `worker_rng` every rank's, in rank order."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": worker_rng[0],
            "worker_rng": worker_rng,
            "history": history,
            "spec": spec.model_dump(mode="json"),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Weights and optimisation state (RNG states: `restore_rng`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


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


_trials_started = 0  # trials this process has started: Ray Tune's reuse_actors runs several in one process


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
    global _trials_started
    _trials_started += 1
    in_process = _trials_started
    if in_process == 1:
        # The imports and the caller's objects, never garbage: later collections need not scan them (a full
        # collection with torch loaded takes 0.17 s; after this, milliseconds). Nothing of a trial is frozen.
        gc.freeze()
    else:
        release_heap()  # what the previous trial left is not part of this trial's baseline
    out_dir = Path(out_dir)
    world = World.current()
    world.on_main(lambda: _open_trial_dir(spec, out_dir))
    reporter = reporter or (JsonLinesReporter(out_dir / "metrics.jsonl") if world.main else NullReporter())
    seed_everything(spec.seed)  # on every rank: the same initial weights everywhere
    device = resolve_device(spec.train.device)
    data = _Data.load(spec)
    check_world(spec, world, len(data.train))
    learner = _Learner.build(spec, data, device, world)
    seed_worker(spec.seed, world, 1)
    trainable, total = count_parameters(learner.model)
    measures = TrialMeasures.of(
        learner.model, device
    )  # after data and model: the baseline of train_memory_mb

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
    detector_parts(learner.model)[1].prefix_source = cache
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
    spec: TrialSpec, learner: _Learner, epoch: int, history: list[dict[str, Any]], out_dir: Path, world: World
) -> Path:
    """Rank 0 writes the epoch's checkpoint with every rank's RNG state; no rank goes on before it is on disk
    (or before learning that the save failed)."""
    worker_rng = world.gather(rng_state())
    state = learner.state(spec, epoch, history, worker_rng)
    return world.on_main(lambda: save_checkpoint(out_dir, epoch, state, spec.train.keep_checkpoints))


def evaluate_epoch(
    spec: TrialSpec,
    model: torch.nn.Module,
    data: _Data,
    epoch: int,
    device: torch.device,
    cache: FeatureCache | None,
    out_dir: Path,
    world: World = World(),
) -> dict[str, float]:
    """Predict the val split, score it (COCO or LVIS rules), keep the files under eval/epoch-NNNN.

    Each rank predicts its share of the images; rank 0 scores all of them, each image once, and every rank
    returns rank 0's metrics.
    """
    mine = predict(spec, model, data.val, device, cache, world.shard(list(range(len(data.val)))))
    position = {image_id: n for n, image_id in enumerate(data.val.image_ids)}
    # In the split's image order, as one process predicts them (sorted is stable: each image's own order stays).
    detections = sorted(
        (d for part in world.gather(mine) for d in part), key=lambda d: position[d["image_id"]]
    )

    def score() -> dict[str, float]:
        result = evaluate_detections(
            data.val.coco,
            detections,
            data.buckets,
            data.counts,
            data.val.image_ids,
            data.protocol,
            data.max_detections,
        )
        write_eval_files(result, detections, out_dir / "eval" / f"epoch-{epoch:04d}")
        m = result.metrics
        log.info(
            f"epoch {epoch}: AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AP_r {m['AP_r']:.3f} AP_c {m['AP_c']:.3f} "
            f"AP_f {m['AP_f']:.3f}"
        )
        return m

    return world.on_main(score)


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's figures, with evaluation figures from the last evaluated epoch."""
    final: dict[str, Any] = {}
    for record in history:
        final.update(record)
    final["epochs"] = history[-1]["epoch"] if history else 0
    return final
