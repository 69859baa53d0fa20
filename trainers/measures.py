"""What a trial costs and how much of it trains: parameter split and the training's own memory.

- `head_params`: trainable parameters outside the backbone body (neck, RPN, box head: what the freeze mode
  never touches); `body_params`: all parameters of the backbone body; `trainable_share`: trainable / total,
  the x-axis of Vasconcelos et al. (CVPR 2022).
- `peak_memory_mb` is the process's peak RSS on CPU while the trial trains and evaluates, mostly
  the libraries; `train_memory_mb` is that peak minus the RSS once the model and data are loaded: what
  training itself adds. The peak is the trial's own even when a process runs several trials one after
  another (Ray Tune's `reuse_actors`): `begin_trial` frees what an earlier trial left and `start_peak_memory`
  resets the kernel's high-water mark (or CUDA's peak) before the first epoch.
- A data-parallel trial's figures are the trial's, not one worker's (`across_workers`): throughput and memory
  summed over the workers, step and epoch times the slowest worker's, plus `peak_memory_mb_worker_max` and
  `workers`.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainers.distributed import World
from trainers.models import count_parameters

SUMMED = ("images_per_s", "peak_memory_mb", "train_memory_mb", "cache_build_s", "cache_bytes")
SLOWEST = ("step_time_s", "epoch_time_s")


def current_rss_mb() -> float:
    """The process's resident set now (Linux /proc; the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_heap() -> None:
    """Collect garbage (a previous trial's cycles) and give freed heap back to the system (glibc's
    malloc_trim; nothing elsewhere), so the RSS is what is alive now."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc is among them on Linux
    except (OSError, AttributeError, TypeError):  # not glibc, or no dynamic symbols
        pass


def start_peak_rss() -> bool:
    """Make the process's peak RSS start from now: reset the kernel's high-water mark (Linux
    /proc/self/clear_refs "5"). False where that is not possible: the peak then covers the whole process."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak RSS since `start_peak_rss` (or since it started)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


_trials_started = 0  # trials this process has started: Ray Tune's reuse_actors runs several in one process


def begin_trial() -> int:
    """Process hygiene before a trial loads anything; returns `trials_in_process` (1: the process started for
    this trial, n: it ran n - 1 before, whose imports and warm-up this one does not pay).

    First trial: `gc.freeze` the imports and the caller's objects, never garbage, so later full collections
    need not scan them (0.17 s with torch loaded; milliseconds after). Nothing of a trial is frozen.
    Later trials: `release_heap`, so what the previous trial left is not part of this trial's baseline
    (measured: without it a reused fine-tuned trial's train_memory_mb read 131 instead of about 280 MB)."""
    global _trials_started
    _trials_started += 1
    if _trials_started == 1:
        gc.freeze()
    else:
        release_heap()
    return _trials_started


def start_peak_memory(device: torch.device) -> None:
    """From here on, `peak_memory_mb` is this trial's. The loading's own garbage is collected and trimmed
    first, so the high-water mark starts from what is alive; on CUDA a previous trial's cached blocks go too
    (they would count against a shared GPU)."""
    release_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start_peak_rss()


def peak_memory_mb(device: torch.device) -> float:
    """The trial's peak since `start_peak_memory`: CUDA's max allocated, or the process's peak RSS on CPU
    (the CPU analogue of max allocated)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


@dataclass(frozen=True)
class TrialMeasures:
    trainable_params: int
    total_params: int
    head_params: int
    body_params: int
    loaded_rss_mb: float  # RSS once model and data are loaded: the baseline of train_memory_mb
    device: str

    @classmethod
    def of(cls, model: nn.Module, device: torch.device) -> TrialMeasures:
        trainable, total = count_parameters(model)
        body = getattr(getattr(model, "backbone", None), "body", None)
        body_params = list(body.parameters()) if isinstance(body, nn.Module) else []
        body_trainable = sum(p.numel() for p in body_params if p.requires_grad)
        return cls(
            trainable_params=trainable,
            total_params=total,
            head_params=trainable - body_trainable,
            body_params=sum(p.numel() for p in body_params),
            loaded_rss_mb=current_rss_mb(),
            device=device.type,
        )

    def epoch_metrics(self, peak: float) -> dict[str, float | int | str]:
        """Per-epoch figures beside the trainer's own, `peak` being `peak_memory_mb` (device as a string:
        the tracker makes it a tag)."""
        metrics: dict[str, float | int | str] = {
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "head_params": self.head_params,
            "body_params": self.body_params,
            "trainable_share": self.trainable_params / self.total_params if self.total_params else 0.0,
            "peak_memory_mb": peak,
            "device": self.device,
        }
        if self.device == "cpu":
            metrics["train_memory_mb"] = max(peak - self.loaded_rss_mb, 0.0)
        return metrics


def across_workers(metrics: dict[str, Any], world: World) -> dict[str, Any]:
    """One rank's epoch figures made the trial's (the same dict on every rank); for one worker the figures
    are unchanged, plus `peak_memory_mb_worker_max` (= peak_memory_mb) and `workers` (1)."""
    everyone = world.gather({key: metrics[key] for key in (*SUMMED, *SLOWEST) if key in metrics})
    combined: dict[str, Any] = {key: sum(m[key] for m in everyone) for key in SUMMED if key in metrics}
    combined.update({key: max(m[key] for m in everyone) for key in SLOWEST if key in metrics})
    combined["peak_memory_mb_worker_max"] = max(m["peak_memory_mb"] for m in everyone)
    combined["workers"] = world.size
    return {**metrics, **combined}
