"""The frozen-feature cache: a frozen backbone prefix runs once per image and orientation, for every trial.

A frozen (or `partial:K`) trial's body prefix (stem + frozen stages, see FrostBackbone.cut_point) gives the
same output for an image every time it sees it. Here that output is computed once per *key*, stored in the
project folder (FROST_HOME/cache/features) and memory-mapped by every trial that shares the key; the
detector's transform, neck, heads and trainable stages still run live. docs/feature-cache.md has the key, the
file format, the budget and the equivalence caveats.

The shard file format is in trainers/feature_store.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from trainers.config import TrialSpec
from trainers.data import CocoDetection, hflip
from trainers.feature_store import LOCK_FILE, SUFFIX, CorruptShard, Shard, open_shard, write_shard
from trainers.files import file_lock, try_file_lock
from trainers.home import frost_home
from trainers.logs import log
from trainers.models import FrostBackbone

FORMAT_VERSION = 1
DEFAULT_BUDGET_FRACTION = 0.25  # of the free disk under the cache root, when cache.budget_mb is unset
BUILD_BATCH = 16
PROGRESS_EVERY_S = 10.0  # a build logs how far it is at most this often


def cache_root(home: Path | None = None) -> Path:
    return (home or frost_home()) / "cache" / "features"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def detector_parts(model: nn.Module) -> tuple[GeneralizedRCNNTransform, FrostBackbone]:
    """The detector's input transform and backbone (every frost detector has both)."""
    transform, backbone = model.transform, model.backbone
    if not isinstance(transform, GeneralizedRCNNTransform) or not isinstance(backbone, FrostBackbone):
        raise TypeError("feature cache: expected a detector from trainers.models.build_detector")
    return transform, backbone


# ---------------------------------------------------------------------------------------------------- key
def dataset_digest(dataset: CocoDetection) -> str:
    """Content digest of one split as a trial sees it: the annotation file's bytes and every used image's."""
    sha = hashlib.sha256(dataset.annotation_file.read_bytes())
    for image_id in dataset.image_ids:
        sha.update(f"\0{image_id}\0".encode())
        sha.update((dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]).read_bytes())
    return sha.hexdigest()


def prefix_weights_digest(backbone: FrostBackbone) -> str:
    """Digest of every tensor (parameters and buffers) of the body's frozen prefix: the weights as loaded."""
    sha = hashlib.sha256()
    cut = backbone.cut_point
    for name, module in backbone.body.named_children():
        for key, tensor in sorted(module.state_dict().items()):
            if key.endswith("num_batches_tracked"):  # a counter: no effect on an eval-mode forward
                continue
            value = tensor.detach().cpu().contiguous()
            sha.update(f"{name}.{key}:{value.dtype}:{tuple(value.shape)}".encode())
            sha.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        if name == cut:
            break
    return sha.hexdigest()


def model_key(spec: TrialSpec, model: nn.Module) -> dict[str, Any]:
    """What makes the prefix's features what they are, model side (the dataset side is in `shard_key`).

    Not in it, on purpose: detector, neck, heads, optimisation and seed (they act after the prefix).
    """
    t, backbone = detector_parts(model)
    return {
        "format": FORMAT_VERSION,
        "backbone": spec.backbone.name,
        "norm": spec.backbone.norm,
        "returned_stages": list(spec.backbone.returned_stages),
        "cut": backbone.cut_point,
        "outputs": backbone.prefix_outputs,
        "weights": prefix_weights_digest(backbone),
        "resize": {"min_size": list(t.min_size), "max_size": t.max_size, "fixed_size": t.fixed_size},
        "size_divisible": t.size_divisible,
        "normalise": {"mean": list(t.image_mean), "std": list(t.image_std)},
        "dtype": spec.cache.dtype,
    }


def shard_key(key: dict[str, Any], split: str, data_digest: str, flip: bool) -> dict[str, Any]:
    return {**key, "split": split, "dataset": data_digest, "flip": flip}


def shard_path(root: Path, key: dict[str, Any]) -> Path:
    model_part = {k: v for k, v in key.items() if k not in ("split", "dataset", "flip")}
    orientation = "flip" if key["flip"] else "noflip"
    return root / _digest(model_part)[:20] / f"{key['split']}-{orientation}-{_digest(key)[:20]}{SUFFIX}"


# ---------------------------------------------------------------------------------------------- building
class SizeMismatch(Exception):
    """An image's size is not the one its annotation gives: the cache cannot stand in for its pixels."""


def _input_batches(model: nn.Module, dataset: CocoDetection, flip: bool) -> Iterator[Tensor]:
    """The body's input for every image of `dataset` in order, as the detector's own transform makes it."""
    for start in range(0, len(dataset), BUILD_BATCH):
        images = []
        for index in range(start, min(start + BUILD_BATCH, len(dataset))):
            image, target = dataset[index]
            (height, width), (real_h, real_w) = dataset.image_size(index), image.shape[-2:]
            if (real_h, real_w) != (height, width):
                # Trials that read the cache never load the image again, only its annotated size.
                raise SizeMismatch(
                    f"{dataset.image_path(index)} is {real_w}x{real_h} but its annotation says {width}x{height}"
                )
            image = hflip(image, target)[0] if flip else image
            images.append(image.float().div_(255))  # exactly as the training loop feeds the detector
        yield detector_parts(model)[0](images)[0].tensors


@torch.no_grad()
def _prefix_batches(model: nn.Module, dataset: CocoDetection, flip: bool, dtype: str) -> Iterator[dict]:
    device = next(model.parameters()).device
    # On the CPU a channels-last input makes every conv and pool of the prefix channels-last: 0.8 of the time
    # (R18 and R50, 1 thread), the same maps to float32 rounding (far below the float16 they are stored in).
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    for inputs in _input_batches(model, dataset, flip):
        maps = detector_parts(model)[1].forward_prefix(inputs.to(device, memory_format=layout))
        yield {
            name: value.to("cpu", getattr(torch, dtype)).contiguous().numpy() for name, value in maps.items()
        }


def _with_progress(batches: Iterator[dict], total: int, label: str) -> Iterator[dict]:
    """The batches, logging `label: done/total images, rate, time left` at most every PROGRESS_EVERY_S."""
    start = last = time.perf_counter()
    done = 0
    for batch in batches:
        yield batch
        done += len(next(iter(batch.values())))
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S and done < total:
            rate = done / (now - start)
            log.info(
                "feature cache: %s",
                f"{label}: {done}/{total} images ({100 * done / total:.0f} %), {rate:.1f} img/s, "
                f"about {(total - done) / rate:.0f} s left",
            )
            last = now


def build_shard(path: Path, key: dict[str, Any], model: nn.Module, dataset: CocoDetection) -> int:
    """Compute and write one shard; the model's mode and the global RNG are left exactly as they were."""
    was_training = model.training
    model.eval()  # the transform resizes to its test size (no random draw); frozen BN is in eval anyway
    label = f"building {key['split']} {'flipped' if key['flip'] else 'unflipped'} ({path.name})"
    log.info("feature cache: %s", f"{label}: {len(dataset)} images")
    try:
        with torch.random.fork_rng(devices=[]):
            batches = _prefix_batches(model, dataset, key["flip"], key["dtype"])
            progress = _with_progress(batches, len(dataset), label)
            return write_shard(path, key, list(dataset.image_ids), progress)
    finally:
        model.train(was_training)


def estimate_bytes(model: nn.Module, input_size: list[int], images: int, dtype: str) -> int:
    """Bytes of `images` records of a body input of `input_size` (H, W), from the prefix's maps."""
    height, width = input_size
    per_image = sum(
        channels * math.ceil(height / stride) * math.ceil(width / stride)
        for channels, stride in _prefix_map_shapes(detector_parts(model)[1])
    )
    return per_image * torch.empty(0, dtype=getattr(torch, dtype)).element_size() * images


@torch.no_grad()
def _prefix_map_shapes(backbone: FrostBackbone) -> list[tuple[int, int]]:
    """(channels, stride) of every map the prefix stores, from one 64 x 64 probe (only when about to build)."""
    probe = torch.zeros(1, 3, 64, 64, device=next(backbone.parameters()).device)
    return [(m.shape[1], 64 // m.shape[-1]) for m in backbone.forward_prefix(probe).values()]


# ---------------------------------------------------------------------------------------------- one trial
@dataclass
class CacheReport:
    """What a trial reports about the cache: used or not, and what *this* trial spent building it."""

    used: bool
    build_s: float = 0.0
    bytes_built: int = 0

    def metrics(self) -> dict[str, float]:
        return {"cache_used": int(self.used), "cache_build_s": self.build_s, "cache_bytes": self.bytes_built}


class FeatureCache:
    """The cached frozen-prefix maps of a trial's key, by (split, flipped): `read` one batch's."""

    def __init__(self, shards: dict[tuple[str, bool], Shard]) -> None:
        self.shards = shards

    def read(self, split: str, image_ids: list[int], flips: list[bool]) -> CachedPrefix:
        """The maps of these images (in this order, each flipped or not): the input of one forward."""
        return CachedPrefix(self, split, image_ids, flips)


@dataclass(frozen=True)
class CachedPrefix:
    """One batch's frozen-prefix maps, as `forward_prefix` would compute them. Called with the batch the body
    would have seen: its size and input shape must be the cached ones (never hand out another batch's maps)."""

    cache: FeatureCache
    split: str
    image_ids: list[int]
    flips: list[bool]

    def __call__(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if x.shape[0] != len(self.image_ids):
            raise RuntimeError(f"feature cache: batch of {x.shape[0]} images, {len(self.image_ids)} read")
        rows = []
        for image_id, flip in zip(self.image_ids, self.flips):
            shard = self.cache.shards[(self.split, flip)]
            if list(x.shape[-2:]) != shard.header["key"]["input_size"]:
                raise RuntimeError(
                    f"feature cache: input {tuple(x.shape[-2:])} but cached for {shard.header['key']['input_size']}"
                )
            rows.append(shard.records[shard.row[image_id]])
        names = rows[0].dtype.names or ()
        return OrderedDict(
            (name, torch.from_numpy(np.stack([row[name] for row in rows])).to(x.device, x.dtype))
            for name in names
        )


def forward_detector(
    detector: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]] | None = None,
    prefix: CachedPrefix | None = None,
) -> Any:
    """The detector's forward (losses in training, detections in eval), its backbone's frozen prefix read
    from `prefix` when given. `detector` may be wrapped (DistributedDataParallel): the backbone is the
    wrapped module's. torchvision's detectors call `backbone(images.tensors)` with nothing else, so the
    prefix waits on the backbone for this one call (`FrostBackbone.reading`)."""
    if prefix is None:
        return detector(images, targets)
    inner = detector.module if isinstance(detector, nn.parallel.DistributedDataParallel) else detector
    with detector_parts(inner)[1].reading(prefix):
        return detector(images, targets)


def cache_refusal(spec: TrialSpec, model: nn.Module, datasets: list[CocoDetection]) -> str | None:
    """Why this trial cannot use the cache (one line for the log), or None."""
    if not spec.cache.features:
        return "off (cache.features=false)"
    t, backbone = detector_parts(model)
    if spec.backbone.freeze == "finetune" or backbone.cut_point is None:
        return "ignored (cache.features) for a fine-tuned backbone: it has no fixed part to cache"
    if len(t.min_size) != 1 or t.fixed_size is not None:
        return "off: the detector's transform draws the input size at random"
    sizes = {(ds.coco.imgs[i]["height"], ds.coco.imgs[i]["width"]) for ds in datasets for i in ds.image_ids}
    if len(sizes) > 1:
        # Batches pad to their largest image, and features near a border depend on that padding.
        return f"off: images have {len(sizes)} different sizes, so batch padding would change features"
    return None


def budget_bytes(spec: TrialSpec, root: Path) -> int:
    if spec.cache.budget_mb is not None:
        return int(spec.cache.budget_mb * 2**20)
    existing = root
    while not existing.exists():
        existing = existing.parent
    return int(shutil.disk_usage(existing).free * DEFAULT_BUDGET_FRACTION)


def _input_size(model: nn.Module, dataset: CocoDetection) -> list[int]:
    was_training = model.training
    model.eval()
    try:
        return list(detector_parts(model)[0]([dataset[0][0].float()])[0].tensors.shape[-2:])
    finally:
        model.train(was_training)


def _wanted_shards(
    spec: TrialSpec, train: CocoDetection, val: CocoDetection
) -> list[tuple[str, CocoDetection, bool]]:
    wanted = [("train", train, False)] if spec.input.hflip < 1 else []
    if spec.input.hflip > 0:
        wanted.append(("train", train, True))  # features of a flipped image are not flipped features
    return [*wanted, ("val", val, False)]


def shard_lock(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _open_or_build(
    path: Path, skey: dict[str, Any], model: nn.Module, dataset: CocoDetection
) -> tuple[Shard, int, float]:
    """The shard at `path`, built first if missing or corrupt (the caller holds its lock): (shard, bytes, s)."""
    try:
        return open_shard(path, skey), 0, 0.0
    except FileNotFoundError:
        pass
    except CorruptShard as exc:
        log.info("feature cache: %s", f"{exc}: rebuilding it")
        path.unlink()
    start = time.perf_counter()
    size = build_shard(path, skey, model, dataset)
    return open_shard(path, skey), size, time.perf_counter() - start


def prepare_feature_cache(
    spec: TrialSpec, model: nn.Module, train: CocoDetection, val: CocoDetection, root: Path | None = None
) -> tuple[FeatureCache | None, CacheReport]:
    """Open this trial's shards, building the missing or corrupt ones first, each under its own lock.

    Concurrent trials of one key never build the same shard: each first builds the missing shards no other
    trial is building (so two trials build two shards at once), then waits for the rest and reads them. The
    key's lock is held shared meanwhile, so `frost cache clear` leaves the key alone. Over the budget nothing is
    built and the trial trains without the cache (one log line).
    """
    reason = cache_refusal(spec, model, [train, val])
    if reason:
        log.info("feature cache: %s", reason)
        return None, CacheReport(False)
    root = root or cache_root()
    key = {**model_key(spec, model), "input_size": _input_size(model, train)}
    wanted = [
        (split, ds, shard_key(key, split, dataset_digest(ds), flip))
        for split, ds, flip in _wanted_shards(spec, train, val)
    ]
    directory = shard_path(root, wanted[0][2]).parent
    with contextlib.ExitStack() as stack:
        # The key's lock may not be a file (a folder, say): unlocked, `frost cache clear` could pull shards away.
        try:
            stack.enter_context(file_lock(directory / LOCK_FILE, shared=True))
        except OSError as exc:
            log.info(
                "feature cache: %s",
                f"off: cannot lock {directory} ({exc.strerror or exc}); training without it",
            )
            return None, CacheReport(False)
        shards, missing = {}, []
        for split, ds, skey in wanted:
            try:
                shards[(split, skey["flip"])] = open_shard(shard_path(root, skey), skey)
            except (FileNotFoundError, CorruptShard):  # looked at again under the shard's lock
                missing.append((split, ds, skey))
        if not missing:
            log.info("feature cache: %s", f"reading {len(shards)} shard(s) under {directory}")
            return FeatureCache(shards), CacheReport(True)
        images = sum(len(ds) for _, ds, _ in missing)
        estimate = estimate_bytes(model, key["input_size"], images, spec.cache.dtype)
        budget = budget_bytes(spec, root)
        if estimate > budget:
            log.info(
                "feature cache: %s",
                f"not built: estimated {estimate / 2**20:.1f} MiB exceeds the budget of {budget / 2**20:.1f} MiB "
                "(cache.budget_mb); training without the cache",
            )
            return None, CacheReport(False)
        seconds, built, count = 0.0, 0, 0
        try:
            for wait in (False, True):  # first the shards no one else is building, then wait for the others
                for split, ds, skey in missing:
                    if (split, skey["flip"]) in shards:
                        continue
                    path = shard_path(root, skey)
                    lock = file_lock(shard_lock(path)) if wait else try_file_lock(shard_lock(path))
                    with lock as held:
                        if held is None:
                            continue
                        shard, size, spent = _open_or_build(path, skey, model, ds)
                    shards[(split, skey["flip"])] = shard
                    seconds, built, count = seconds + spent, built + size, count + (size > 0)
        except SizeMismatch as exc:  # the shard's temporary file is gone (atomic_writer)
            log.info("feature cache: %s", f"off: {exc}; training without the cache")
            return None, CacheReport(False)
    log.info(
        "feature cache: %s",
        f"built {count} shard(s), {built / 2**20:.1f} MiB in {seconds:.1f} s (estimate "
        f"{estimate / 2**20:.1f} MiB for the {len(missing)} missing); read {len(shards) - count} under {directory}",
    )
    return FeatureCache(shards), CacheReport(True, seconds, built)
