"""One trial, top to bottom: data → model → epochs (train, evaluate, checkpoint, report) → final metrics.

A trial directory holds `trial.yaml`, `checkpoints/epoch-NNNN/` (model, optimizer, scheduler, scaler, RNG
states, history), `eval/epoch-NNNN/` (metrics, per-class AP, detections) and `metrics.jsonl`. Starting a trial
on a directory that holds checkpoints resumes from the newest one; the resumed run ends with the metrics of an
uninterrupted one, because every random draw comes from a saved or per-epoch-seeded generator.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainers.config import TrialSpec, dump_trial_spec
from trainers.data import CocoDetection, collate, hflip, load_datasets
from trainers.errors import FrostError, TrainingError
from trainers.evaluate import category_buckets, evaluate_detections, train_image_counts, write_eval_files
from trainers.measures import TrialMeasures
from trainers.models import build_detector, count_parameters
from trainers.reporting import JsonLinesReporter, Reporter

CHECKPOINT_FILE = "state.pt"


def log(message: str) -> None:
    print(f"frost: {message}", file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    # Not `epoch-NNNN.tmp`: a save interrupted after state.pt was written is no checkpoint (the rename is).
    return sorted(p for p in root.glob("epoch-[0-9]*[0-9]") if (p / CHECKPOINT_FILE).is_file())


def save_checkpoint(out_dir: Path, epoch: int, state: dict[str, Any], keep: int) -> Path:
    final = out_dir / "checkpoints" / f"epoch-{epoch:04d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / CHECKPOINT_FILE)
    (tmp / "metrics.json").write_text(json.dumps(state["history"][-1]))
    (tmp / "history.json").write_text(json.dumps(state["history"]))  # readable without torch
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic: a checkpoint directory is complete or absent
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def newest_checkpoint(out_dir: Path, resume_from: Path | None) -> Path | None:
    """The newest epoch checkpoint in the trial directory, or `resume_from` when that is newer."""
    found = checkpoint_dirs(out_dir)
    candidates = found[-1:] + (
        [resume_from] if resume_from and (resume_from / CHECKPOINT_FILE).is_file() else []
    )
    if not candidates:
        return None

    def epoch_of(path: Path) -> int:
        return json.loads((path / "metrics.json").read_text()).get("epoch", 0)

    return max(candidates, key=epoch_of)


# ---------------------------------------------------------------------------------------------- measuring
def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak resident set, the CPU analogue of max allocated.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- epochs
def train_one_epoch(
    spec: TrialSpec,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    dataset: CocoDetection,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    model.train()
    gen = epoch_generator(spec.seed, epoch)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    flips = (torch.rand(len(dataset), generator=gen) < spec.input.hflip).tolist()
    batches = DataLoader(
        [(i, flips[n]) for n, i in enumerate(order)],
        batch_size=spec.train.batch_size,
        collate_fn=lambda items: _load_batch(dataset, items),
        num_workers=spec.train.workers,
    )
    use_amp = spec.train.amp and device.type == "cuda"
    steps = len(batches)
    losses, step_times, images_seen = [], [], 0
    start = time.perf_counter()
    for step, (images, targets) in enumerate(batches, start=1):
        t0 = time.perf_counter()
        images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
            raise TrainingError(f"non-finite loss at epoch {epoch} step {step}/{steps} ({parts})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if spec.optim.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], spec.optim.grad_clip
            )
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        images_seen += len(images)
        if step % spec.train.log_every == 0 or step == steps:
            rate = images_seen / (time.perf_counter() - start)
            log(
                f"epoch {epoch}/{spec.train.epochs} step {step}/{steps} loss {np.mean(losses[-10:]):.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.4f} {rate:.1f} img/s"
            )
    elapsed = time.perf_counter() - start
    return {
        "loss": float(np.mean(losses)),
        "lr": float(optimizer.param_groups[0]["lr"]),
        "images_per_s": images_seen / elapsed,
        "step_time_s": float(np.mean(step_times)),
        "epoch_time_s": elapsed,
    }


def _load_batch(dataset: CocoDetection, items: list[tuple[int, bool]]) -> tuple[list, list]:
    pairs = []
    for index, flip in items:
        image, target = dataset[index]
        pairs.append(hflip(image, target) if flip else (image, target))
    return collate(pairs)


@torch.no_grad()
def predict(
    spec: TrialSpec, model: torch.nn.Module, dataset: CocoDetection, device: torch.device
) -> list[dict[str, Any]]:
    """Detections on a split in COCO results format (dataset category ids, xywh boxes)."""
    model.eval()
    loader = DataLoader(
        range(len(dataset)),
        batch_size=spec.eval.batch_size,
        collate_fn=lambda idx: collate([dataset[i] for i in idx]),
        num_workers=spec.train.workers,
    )
    use_amp = spec.train.amp and device.type == "cuda"
    detections = []
    for images, targets in loader:
        images = [img.to(device).float().div_(255) for img in images]
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
        if previous.model_dump(exclude={"train": {"epochs"}}) != spec.model_dump(
            exclude={"train": {"epochs"}}
        ):
            raise FrostError(
                f"--out {out_dir}: holds checkpoints of a different trial ({spec_file}); use another directory"
            )
    dump_trial_spec(spec, spec_file)


def run_trial(
    spec: TrialSpec,
    out_dir: Path,
    reporter: Reporter | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one trial; returns the final epoch's metrics (plus `epochs`).

    Starting again on the same `out_dir` resumes from its newest checkpoint (or `resume_from`), and the
    reporter is told so once (`reporter.resume`) before training goes on.
    """
    out_dir = Path(out_dir)
    prepare_trial_dir(spec, out_dir)
    refuse_failed_trial(out_dir)
    reporter = reporter or JsonLinesReporter(out_dir / "metrics.jsonl")
    seed_everything(spec.seed)
    device = resolve_device(spec.train.device)

    train_set, val_set = load_datasets(spec.data)
    if len(train_set) == 0:
        raise FrostError(f"{train_set.annotation_file}: no training images")
    buckets = category_buckets(train_set.coco, spec.eval.rare_max, spec.eval.common_max)
    counts = train_image_counts(train_set.coco)

    model = build_detector(spec, train_set.categories.num_classes).to(device)
    trainable, total = count_parameters(model)
    measures = TrialMeasures.of(model, device)  # after data and model: the baseline of train_memory_mb
    optimizer = build_optimizer(spec, model)
    steps_per_epoch = math.ceil(len(train_set) / spec.train.batch_size)
    total_steps = steps_per_epoch * spec.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(spec, s, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=spec.train.amp and device.type == "cuda")

    history: list[dict[str, Any]] = []
    start_epoch = 1
    checkpoint = newest_checkpoint(out_dir, resume_from)
    if checkpoint is not None:
        state = torch.load(checkpoint / CHECKPOINT_FILE, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        log(f"resuming {out_dir} from {checkpoint.name} (epoch {state['epoch']} done)")
        reporter.resume(history, checkpoint)
    record_attempt(out_dir, start_epoch - 1)
    log(
        f"trial: {spec.detector} {spec.backbone.name} freeze={spec.backbone.freeze} on {device}; "
        f"{len(train_set)} train / {len(val_set)} val images, {train_set.categories.num_classes} classes; "
        f"{trainable:,} of {total:,} parameters trainable"
    )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(start_epoch, spec.train.epochs + 1):
        metrics: dict[str, Any] = {"epoch": epoch}
        try:
            metrics.update(
                train_one_epoch(spec, model, optimizer, scheduler, scaler, train_set, epoch, device)
            )
        except TrainingError as exc:
            record_failure(out_dir, epoch, str(exc))
            raise
        metrics.update(measures.epoch_metrics(peak_memory_mb(device)))
        if epoch % spec.eval.every == 0 or epoch == spec.train.epochs:
            detections = predict(spec, model, val_set, device)
            result = evaluate_detections(
                val_set.coco, detections, buckets, counts, image_ids=val_set.image_ids
            )
            write_eval_files(result, detections, out_dir / "eval" / f"epoch-{epoch:04d}")
            metrics.update(result.metrics)
            log(
                f"epoch {epoch}: AP {result.metrics['AP']:.3f} AP50 {result.metrics['AP50']:.3f} "
                f"AP_r {result.metrics['AP_r']:.3f} AP_c {result.metrics['AP_c']:.3f} "
                f"AP_f {result.metrics['AP_f']:.3f}"
            )
        history.append(metrics)
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "history": history,
            "spec": spec.model_dump(mode="json"),
        }
        checkpoint_dir = save_checkpoint(out_dir, epoch, state, spec.train.keep_checkpoints)
        reporter.report(epoch, metrics, checkpoint_dir)
    return final_metrics(history)


# ---------------------------------------------------------------------------------------------- attempts
ATTEMPTS_FILE = "attempts.jsonl"
FAILED_FILE = "failed.json"


def record_attempt(out_dir: Path, resumed_after: int) -> None:
    """One line per start of this trial: when, where (host, pid) and after which epoch it resumed.

    What a retried or resumed trial re-ran is read off here; the pid is the process training right now.
    """
    line = {
        "attempt": len(read_attempts(out_dir)) + 1,
        "started": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "resumed_after_epoch": resumed_after,
    }
    with (out_dir / ATTEMPTS_FILE).open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def read_attempts(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / ATTEMPTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_failure(out_dir: Path, epoch: int, message: str) -> None:
    """A deterministic failure (non-finite loss): retrying from the same checkpoint fails the same way."""
    (out_dir / FAILED_FILE).write_text(json.dumps({"epoch": epoch, "error": message}))


def refuse_failed_trial(out_dir: Path) -> None:
    """A trial that failed deterministically is not trained again: retries (a sweep's) fail at once."""
    path = out_dir / FAILED_FILE
    if path.exists():
        failure = json.loads(path.read_text())
        raise TrainingError(
            f"{failure['error']} (recorded in {path}; training again from the same checkpoint would repeat it: "
            "change the trial or remove that file)"
        )


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's figures, with evaluation figures from the last evaluated epoch."""
    final: dict[str, Any] = {}
    for record in history:
        final.update(record)
    final["epochs"] = history[-1]["epoch"] if history else 0
    return final
