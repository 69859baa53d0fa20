"""`backbone.weights` → the trunk's state_dict: builtin, imagenet, a path or URL; checked key by key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
import torchvision
from torch import Tensor, nn

from trainers.errors import FrostError, shown
from trainers.trunks import IMAGENET_WEIGHTS, build_classifier, is_head_key, layout_of


def check_sha256(path: Path, expected: str | None) -> None:
    """`backbone.weights_sha256`: the file must be the one pinned, or nothing of it is loaded."""
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise FrostError(
            f"backbone.weights_sha256: {path} has sha256 {digest.hexdigest()}, not the pinned {expected}; "
            "not loaded"
        )


def load_classifier_state(backbone: str, weights: str, sha256: str | None = None) -> dict[str, Tensor] | None:
    """Resolve `backbone.weights` to the trunk's state_dict (classifier head dropped), or None for random init.

    `none` | `builtin` (offline-pretrained, trainers.synth.pretrain) | `imagenet` (torchvision's published weights,
    from the torch.hub cache; downloaded unless FROST_OFFLINE=1) | a path, file:// or http(s):// URI of a
    classifier checkpoint (plain state_dict, or a dict with "state_dict"/"model" and optionally "arch").
    """
    layout_of(backbone)
    if weights == "none":
        return None
    if weights == "builtin":
        from trainers.synth.pretrain import ensure_builtin_classifier  # lazy: pretraining pulls in data code

        path = Path(ensure_builtin_classifier(backbone))
        return _trunk_state(backbone, read_checkpoint(path), str(path))
    if weights == "imagenet":
        state, source = _imagenet_state(backbone)
        return _trunk_state(backbone, state, source)
    if weights.startswith("https://"):
        return _trunk_state(backbone, read_checkpoint(_download(weights), sha256), weights)
    if weights.startswith("file://"):
        path = Path(unquote(urlparse(weights).path))
    elif "://" in weights:
        scheme = weights.split("://", 1)[0]
        raise FrostError(
            f"backbone.weights: {weights}: {scheme}:// is not supported; copy the checkpoint to a local "
            "path (or https:// URL) and give that"
        )
    else:
        path = Path(weights).expanduser()
    return _trunk_state(backbone, read_checkpoint(path, sha256), str(path))


def read_checkpoint(path: Path, sha256: str | None = None) -> Any:
    """torch.load a checkpoint safely (tensors and plain containers only: nothing in it runs), after checking
    its pinned sha256 if given; or FrostError naming the file."""
    if not path.is_file():
        raise FrostError(f"backbone.weights: {path}: no such checkpoint file")
    check_sha256(path, sha256)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types (pickle, zip, RuntimeError) for a bad file
        raise FrostError(
            f"backbone.weights: {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _offline() -> bool:
    return os.environ.get("FROST_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def imagenet_weights_file(backbone: str) -> tuple[str, Path]:
    """(download URL, expected cache file) of torchvision's ImageNet weights, honouring TORCH_HOME."""
    enum = getattr(torchvision.models, IMAGENET_WEIGHTS[backbone])
    url = enum.IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _imagenet_state(backbone: str) -> tuple[Any, str]:
    url, path = imagenet_weights_file(backbone)
    if path.is_file():
        return read_checkpoint(path), str(path)

    def unavailable(reason: str) -> FrostError:
        return FrostError(
            f"backbone.weights: imagenet: torchvision's ImageNet weights for {backbone} are not at {path} "
            f"and {reason}. Either place {path.name} (from {url}) at that path (TORCH_HOME decides the "
            "folder), or set backbone.weights to `builtin` (pretrained offline on synthetic data) or to "
            "the path of a classifier checkpoint."
        )

    if _offline():
        raise unavailable("FROST_OFFLINE is set, so no download was tried")
    # Fetched to a file, then loaded like every other checkpoint (weights_only=True): torch.hub's
    # load_state_dict_from_url would unpickle whatever the URL served (docs/stack.md, "Loading files safely").
    # torchvision's file names carry their sha256 prefix, checked as the bytes arrive (torch.hub's check_hash).
    match = torch.hub.HASH_REGEX.search(path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.hub.download_url_to_file(url, str(partial), match.group(1) if match else None, progress=False)
        os.replace(partial, path)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise unavailable(f"the download failed ({type(exc).__name__}: {exc})") from None
    return read_checkpoint(path), str(path)


def _download(url: str) -> Path:
    """The file of an https:// checkpoint, fetched into the torch.hub cache once; loading it is
    read_checkpoint's (weights_only=True: torch.hub's own loader would unpickle it, docs/stack.md)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return cached
    if _offline():
        raise FrostError(
            f"backbone.weights: {url}: not in the cache at {cached} and FROST_OFFLINE is set; "
            "place the file there or give a local path"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    try:
        torch.hub.download_url_to_file(url, str(partial), progress=False)
        os.replace(partial, cached)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise FrostError(f"backbone.weights: {url}: download failed ({type(exc).__name__}: {exc})") from None
    return cached


def _unwrap_state(raw: Any, backbone: str, source: str) -> dict[str, Tensor]:
    """Accept a plain state_dict or {"state_dict"|"model": ..., "arch": ...}; check the architecture."""
    if not isinstance(raw, dict):
        raise FrostError(f"backbone.weights: {source}: expected a state_dict, got {type(raw).__name__}")
    arch = raw.get("arch")
    if arch is not None and arch != backbone:
        raise FrostError(
            f"backbone.weights: {source}: checkpoint is for {shown(arch)} but backbone.name is {shown(backbone)}"
        )
    for key in ("state_dict", "model"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not raw or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        raise FrostError(f"backbone.weights: {source}: no state_dict of tensors found in the checkpoint")
    if all(k.startswith("module.") for k in raw):  # saved from DataParallel / DDP
        raw = {k.removeprefix("module."): v for k, v in raw.items()}
    return raw


def _trunk_state(backbone: str, raw: Any, source: str) -> dict[str, Tensor]:
    """The checkpoint's trunk weights, checked key by key and shape by shape against the architecture."""
    state = {k: v for k, v in _unwrap_state(raw, backbone, source).items() if not is_head_key(k)}
    with torch.device("meta"):  # layout only: no memory, no init cost
        expected = {
            k: v.shape for k, v in build_classifier(backbone).state_dict().items() if not is_head_key(k)
        }
    # A checkpoint saved from a FrozenBatchNorm2d model has no num_batches_tracked: that is fine.
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k])
    if missing or unexpected or wrong:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise FrostError(
            f"backbone.weights: {source}: keys do not fit a {backbone} classifier: {'; '.join(problems)}"
        )
    return state


def load_trunk(classifier: nn.Module, state: dict[str, Tensor], backbone: str) -> None:
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    missing = [k for k in missing if not is_head_key(k) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # _trunk_state checked this already; a mismatch here is a bug
        raise RuntimeError(f"{backbone}: trunk did not load: missing {missing}, unexpected {unexpected}")
