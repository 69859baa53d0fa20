"""The offline stand-in for ImageNet weights: a torchvision classifier pretrained on synthetic object crops.

The upstream task classifies one object per crop among `classes` kinds of the synth catalogue (shape ×
texture × colour, in catalogue order, so the first 64 include every possible detection class and their
look-alike partners, the rest are other combinations of the same factors), on the same cluttered
backgrounds and at the same pixel scales as the detection images. Classes are balanced and there are many
more images than in the detection set: the features a frozen detector backbone needs are learnt here.

Checkpoints are `{"arch", "state_dict", "num_classes", "meta"}` of plain tensors, numbers and strings, so
`torch.load(path, weights_only=True)` reads them. The builtin cache keys each file by a digest of its
PretrainSpec and the generator version: a new recipe never reuses stale weights.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.config import BACKBONES, apply_overrides, format_validation_error
from trainers.errors import FrostError, TrainingError
from trainers.files import atomic_writer, file_lock
from trainers.home import frost_home
from trainers.logs import log
from trainers.synth.dataset import GENERATOR_VERSION
from trainers.synth.kinds import COLOURS, SHAPES, TEXTURES, catalogue
from trainers.synth.render import render_crop

# The detectors' GeneralizedRCNNTransform normalises with these by default: pretrain with the same.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class PretrainSpec(BaseModel):
    """The upstream classification recipe. The defaults pretrain ResNet-18 in about 4.5 minutes on 2 CPU
    cores (measured: 264 s, val accuracy 0.48 over 96 classes, chance 0.01)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: Literal[BACKBONES] = "resnet18"  # type: ignore[valid-type]
    classes: int = Field(
        96,
        ge=2,
        le=len(SHAPES) * len(TEXTURES) * len(COLOURS),
        description="first N kinds of the synth catalogue",
    )
    train_images: int = Field(9600, ge=2, description="crops, balanced over classes, drawn once")
    val_images: int = Field(1920, ge=1, description="held-out crops, balanced over classes")
    image_size: int = Field(64, ge=32, le=512, description="crop side in px (objects 20–85% of it)")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.05, gt=0, description="peak SGD learning rate of the one-cycle schedule")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-5, ge=0)
    warmup_fraction: float = Field(0.15, gt=0, lt=1, description="share of steps spent warming up")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    shift: int = Field(6, ge=0, le=16, description="augmentation: random translation up to this many px")
    seed: int = 0
    log_every: int = Field(25, ge=1, description="progress line every N steps")


def default_pretrain_spec(backbone: str) -> PretrainSpec:
    return load_pretrain_spec(backbone, [])


def load_pretrain_spec(backbone: str, overrides: list[str]) -> PretrainSpec:
    """The default recipe for `backbone` with dotted `key=value` overrides, validated (FrostError if not)."""
    data = apply_overrides({"backbone": backbone}, overrides)
    try:
        return PretrainSpec.model_validate(data)
    except ValidationError as exc:
        raise FrostError(f"pretrain spec is invalid:\n{format_validation_error(exc)}") from None


def spec_digest(spec: PretrainSpec) -> str:
    text = f"{spec.model_dump_json()}|synth-generator-{GENERATOR_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def weights_path(spec: PretrainSpec) -> Path:
    """Where the cache keeps the checkpoint of `spec`."""
    return frost_home() / "pretrained" / f"{spec.backbone}-{spec_digest(spec)}.pt"


def builtin_weights_path(backbone: str) -> Path:
    return weights_path(default_pretrain_spec(backbone))


def ensure_classifier(spec: PretrainSpec) -> Path:
    """The cached checkpoint of `spec`, pretrained on first use. Concurrent callers (trials starting
    together) serialise on a file lock: one trains, the others wait and reuse its file."""
    path = weights_path(spec)
    if path.exists():
        return path
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            log.info("no cached %s classifier at %s: pretraining it now", spec.backbone, path)
            pretrain_classifier(spec, path)
    return path


def ensure_builtin_classifier(backbone: str) -> Path:
    """The builtin weights of `backbone` (the default recipe), pretrained on first use."""
    return ensure_classifier(default_pretrain_spec(backbone))


def build_classifier(backbone: str, num_classes: int) -> torch.nn.Module:
    """The plain torchvision classifier (standard BatchNorm) the detector's backbone loads from."""
    return getattr(torchvision.models, backbone)(weights=None, num_classes=num_classes)


def make_crops(spec: PretrainSpec, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced uint8 crops (N, 3, S, S) and labels of a split; crop i of a split is its own seeded draw."""
    count = spec.train_images if split == "train" else spec.val_images
    kinds = catalogue()[: spec.classes]
    split_code = {"train": 11, "val": 12}[split]  # streams apart from the detection images' (1, 2)
    images = np.empty((count, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    labels = np.arange(count) % spec.classes
    for i, label in enumerate(labels):
        rng = np.random.default_rng([spec.seed, split_code, i])
        images[i] = render_crop(rng, kinds[label], spec.image_size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (every kind is mirror-symmetric) and translations (reflect-padded)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if shift == 0:
        return images
    size = images.shape[-1]
    padded = torch.nn.functional.pad(images.float(), [shift] * 4, mode="reflect")
    offsets = torch.randint(0, 2 * shift + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(_normalise(images[start : start + batch_size]))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def _log(spec: PretrainSpec, message: str) -> None:
    log.info("pretrain %s: %s", spec.backbone, message)


def _train_epoch(
    spec: PretrainSpec,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: torch.nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    generator: torch.Generator,
    epoch: int,
) -> list[float]:
    """One pass over the crops in full batches (BatchNorm needs more than one sample); the losses."""
    model.train()
    batch_size = min(spec.batch_size, len(train_x))
    steps = len(train_x) // batch_size
    order = torch.randperm(len(train_x), generator=generator)
    losses = []
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        images = _normalise(_augment(train_x[index], spec.shift, generator))
        loss = loss_fn(model(images), train_y[index])
        if not math.isfinite(loss.item()):
            raise TrainingError(f"pretraining diverged (loss {loss.item()}): lower lr (now {spec.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % spec.log_every == 0:
            _log(spec, f"epoch {epoch}/{spec.epochs} step {step + 1}/{steps} loss {loss.item():.3f}")
    return losses


def pretrain_classifier(spec: PretrainSpec, out: Path | None = None) -> Path:
    """Train the classifier of `spec` on synthetic crops and save its checkpoint (atomically) at `out`,
    by default the cache path of `spec`. Returns the path."""
    out = Path(out) if out else weights_path(spec)
    start = time.perf_counter()
    torch.manual_seed(spec.seed)
    _log(spec, f"drawing {spec.train_images} train + {spec.val_images} val crops of {spec.classes} kinds")
    train_x, train_y = make_crops(spec, "train")
    val_x, val_y = make_crops(spec, "val")
    _log(spec, f"crops ready in {time.perf_counter() - start:.0f} s")

    model = build_classifier(spec.backbone, spec.classes)
    batch_size = min(spec.batch_size, len(train_x))
    steps_per_epoch = len(train_x) // batch_size  # full batches only: BatchNorm needs more than one sample
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=spec.warmup_fraction
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    generator = torch.Generator().manual_seed(spec.seed)
    val_acc = 0.0
    for epoch in range(1, spec.epochs + 1):
        losses = _train_epoch(spec, model, optimizer, schedule, loss_fn, train_x, train_y, generator, epoch)
        val_acc = accuracy(model, val_x, val_y)
        _log(
            spec,
            f"epoch {epoch}/{spec.epochs} loss {np.mean(losses):.3f} val_acc {val_acc:.3f} "
            f"(chance {1 / spec.classes:.3f}, {time.perf_counter() - start:.0f} s)",
        )
    meta = {
        "val_acc": val_acc,
        "chance": 1 / spec.classes,
        "seconds": round(time.perf_counter() - start, 1),
        "spec": spec.model_dump(),
        "digest": spec_digest(spec),
        "synth_generator_version": GENERATOR_VERSION,
        "class_names": [kind.name for kind in catalogue()[: spec.classes]],
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
    }
    _save_atomically(
        {"arch": spec.backbone, "state_dict": model.state_dict(), "num_classes": spec.classes, "meta": meta},
        out,
    )
    _log(spec, f"saved {out} (val_acc {val_acc:.3f}, {meta['seconds']:.0f} s)")
    return out


def _save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    with atomic_writer(path) as fh:
        torch.save(checkpoint, fh)
