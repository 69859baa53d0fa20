"""Data-parallel trials: who this process is among the trial's workers, and the few collectives the loop uses.

A trial runs as one process or as N workers of a `torch.distributed` process group that somebody else
initialised (`frost train --workers N`, torchrun, a Ray Train worker group): the loop never creates or
destroys a group. `World.current()` reads the group; outside one it is rank 0 of 1, and every collective is
then the identity without touching `torch.distributed`, so the one-process path runs exactly as before.
docs/distributed.md has the rules (global batch, shards, checkpoints, RNG).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from trainers.logs import log

T = TypeVar("T")


def default_backend(device: torch.device) -> str:
    """The process group backend for a trial on `device`: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Rank 0: the one worker that writes the trial's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------------------------------------ collectives
    def shard(self, items: list[T]) -> list[T]:
        """This rank's share of `items`: every size-th item from its rank on (all of them for one worker)."""
        return items[self.rank :: self.size]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: float) -> float:
        return sum(self.gather(float(value)))

    def max(self, value: float) -> float:
        return max(self.gather(float(value)))

    def on_main(self, work: Callable[[], T]) -> T:
        """`work()` on rank 0 only; every rank returns its result, or raises its error.

        Sharing the error matters as much as the result: a rank that went on after rank 0 failed would
        wait forever in the next collective.
        """
        if not self.distributed:
            return work()
        outcome: tuple[Any, BaseException | None] = (None, None)
        if self.main:
            try:
                outcome = (work(), None)
            except Exception as exc:
                outcome = (None, _picklable(exc))
        result, error = self.broadcast(outcome)
        if error is not None:
            raise error
        return result


def _picklable(exc: Exception) -> Exception:
    """The error itself where it pickles (FrostError, TrainingError do), else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__} on rank 0: {exc}")


# ---------------------------------------------------------------------------------------------- the model
def worker_seed(seed: int, rank: int, epoch: int) -> int:
    """The global-RNG seed of a rank > 0 (RPN / RoI sampling draws from it): distinct per rank, and a function
    of (seed, rank, epoch) so a resume under another world size re-derives it the same way."""
    return seed * 100_003 + 7_919 * rank + epoch


def sync_batchnorm(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """Trainable BatchNorm computes its batch statistics over every worker's images (SyncBatchNorm).

    Only on CUDA: torch's SyncBatchNorm refuses CPU tensors in training, so CPU workers keep per-worker
    statistics (DDP broadcasts rank 0's running statistics at every forward, so all ranks and the checkpoint
    agree on them). BatchNorm in frozen stages runs in eval mode, where SyncBatchNorm is plain BatchNorm.
    """
    if not (world.distributed and trainable_batchnorm(model)):
        return model
    if device.type != "cuda":
        if world.main:
            log.warning("BatchNorm on CPU workers: statistics are per worker (SyncBatchNorm needs CUDA)")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def trainable_batchnorm(model: nn.Module) -> bool:
    """BatchNorm whose parameters train (neck / heads `norm: bn`, a trained stage with `backbone.norm: bn`)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
        for m in model.modules()
    )


def data_parallel(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The module a training step calls: `model` itself for one worker, else DDP around it (gradients averaged
    over the workers). Checkpoints and evaluation keep using `model`, so their keys have no `module.` prefix.

    DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights.
    Every trainable parameter of frost's detectors gets a gradient in every training step (checked for each
    detector family in tests/test_distributed.py), so `find_unused_parameters` stays off.
    """
    if not world.distributed:
        return model
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])
