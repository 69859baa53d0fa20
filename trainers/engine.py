"""What one trial's steps do: batches, optimisation, a training epoch, prediction and one evaluation.

trainers/train.py runs a trial top to bottom with these (as torchvision's references/detection keeps its loop
in train.py and the steps in engine.py). Every random draw of an epoch comes from (seed, epoch), so a resumed
epoch sees the same batches; with several workers each trains on its share of every global batch
(trainers/distributed.py).

The frozen-feature cache is an input of the forward: a cached trial reads the batch's frozen-prefix maps
(`FeatureCache.read`) and hands them to `forward_detector` with the images (trainers/features.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainers.config import TrialSpec
from trainers.data import CocoDetection, collate, hflip, load_datasets
from trainers.distributed import World, data_parallel, sync_batchnorm
from trainers.errors import FrostError, TrainingError
from trainers.evaluate import category_buckets, evaluate_detections, train_image_counts, write_eval_files
from trainers.features import CachedPrefix, FeatureCache, forward_detector
from trainers.federated import max_detections_of, resolve_protocol
from trainers.logs import log
from trainers.models import build_detector


# ---------------------------------------------------------------------------------------------- batches
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Order and flips of one epoch depend on (seed, epoch) only, so a resumed epoch sees the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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


@dataclass
class TrialData:
    """What a trial reads: the two splits and how it is scored."""

    train: CocoDetection
    val: CocoDetection
    buckets: dict[int, str]
    counts: dict[int, int]
    protocol: str
    max_detections: int

    @classmethod
    def load(cls, spec: TrialSpec) -> TrialData:
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
class Learner:
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
    def build(cls, spec: TrialSpec, data: TrialData, device: torch.device, world: World = World()) -> Learner:
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


# ---------------------------------------------------------------------------------------------- epochs
def train_one_epoch(
    spec: TrialSpec,
    learner: Learner,
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
        collate_fn=lambda chosen: load_batch(dataset, chosen, pixels=cache is None),
        num_workers=spec.train.workers,
    )
    steps = len(batches)
    losses, step_times, images_seen = [], [], 0
    start = time.perf_counter()
    for step, ((images, targets, flipped), batch) in enumerate(zip(loader, batches), start=1):
        t0 = time.perf_counter()
        prefix = (
            cache.read("train", [int(t["image_id"]) for t in targets], flipped) if cache is not None else None
        )
        images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        where = f"epoch {epoch} step {step}/{steps}"
        share = len(images) * world.size / len(batch)
        losses.append(train_step(spec, learner, images, targets, device, where, world, share, prefix))
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
    learner: Learner,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    device: torch.device,
    where: str,
    world: World = World(),
    share: float = 1.0,
    prefix: CachedPrefix | None = None,
) -> float:
    """One optimisation step (AMP on CUDA, optional clipping); returns the global batch's loss. A non-finite
    loss is a TrainingError (on every rank, whichever rank's loss it was).

    `share` is this rank's images times the world size over the global batch's images: DDP averages the
    ranks' gradients, and the weight makes that the mean over the global batch's images when the shares
    are uneven (1 when they are even, and for one worker). `prefix`: the batch's cached frozen-prefix maps.
    """
    optimizer, scaler = learner.optimizer, learner.scaler
    with torch.autocast(device_type=device.type, enabled=spec.train.amp and device.type == "cuda"):
        loss_dict = forward_detector(learner.step_model, images, targets, prefix)
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


def load_batch(
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
        collate_fn=lambda idx: load_batch(dataset, [(i, False) for i in idx], pixels=cache is None)[:2],
        num_workers=spec.train.workers,
    )
    use_amp = spec.train.amp and device.type == "cuda"
    detections = []
    for images, targets in loader:
        images = [img.to(device).float().div_(255) for img in images]
        ids = [int(t["image_id"]) for t in targets]
        prefix = cache.read("val", ids, [False] * len(ids)) if cache is not None else None
        with torch.autocast(device_type=device.type, enabled=use_amp):
            outputs = forward_detector(model, images, prefix=prefix)
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


def evaluate_epoch(
    spec: TrialSpec,
    model: torch.nn.Module,
    data: TrialData,
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
