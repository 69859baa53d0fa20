"""A trial of several data-parallel workers: Ray Train's TorchTrainer, started from the trial's Tune actor.

    Tune actor (1 byte)  -->  fit task (RAY_ADDRESS)  -->  Train controller  -->  N workers (DDP)
          ^                                                      |
          +------- EpochsOnceCallback: rank 0's metrics ---------+

The trainer (trainers/train.py) runs unchanged on every worker inside the process group Ray Train set up:
it shards batches, averages gradients, gathers evaluation and lets rank 0 write the epoch checkpoint into
the trial's stable directory `<sweep>/trials/<trial_id>` (docs/distributed.md). Resuming is the trainer's
own: a restarted worker group (a worker died: Ray Train's FailureConfig) or a restarted trial (the driver
died: Tuner.restore) starts `run_trial` again on that directory and goes on from its newest checkpoint, so
the trial directory must be on storage every worker's node sees (shared file system; on one machine it is).
Ray Train's own checkpoints are not used: Tune would not see them anyway (its callback forwards metrics only).
ASHA's STOP ends the Tune actor, which owns the fit task, which owns the controller and its workers: all stop
together, and Train's cleaner frees the workers' reservation (see run_data_parallel_trial).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from service.workers.trial_log import trial_log
from sweeps.space import worker_resources
from sweeps.spec import SweepSpec
from trainers.config import TrialSpec
from trainers.files import atomic_write_json
from trainers.home import use_home
from trainers.reporting import ReplayingReporter


class TrainReporter(ReplayingReporter):
    """The trainer's reporting seam on a Ray Train worker: every rank reports every epoch (Ray Train's
    report is collective); rank 0's metrics reach Tune through the callback below."""

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        ray.train.report(dict(metrics))


class EpochsOnceCallback(TuneReportCallback):
    """Ray Tune's bridge from Ray Train, forwarding each epoch once: after a worker died, the restarted
    worker group resumes from the checkpoint and re-reports the epochs before it (the trainer replays its
    history on resume); Tune, the scheduler and the MLflow tracker already have them."""

    def __init__(self) -> None:
        super().__init__()
        self._forwarded = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        epoch = int(metrics[0].get("epoch", 0)) if metrics else 0
        if epoch <= self._forwarded:
            return
        self._forwarded = epoch
        super().after_report(run_context, metrics, checkpoint)
        self._wait_until_taken()

    def _wait_until_taken(self) -> None:
        """Hold the workers until Tune's trial session has taken this epoch, which it does once the driver
        let the trial go on after the epoch before (a one-process trial's `tune.report` blocks the same
        way). Without this the workers ran a whole epoch ahead of Tune, and a trial ASHA stopped at epoch k
        had already checkpointed k+1. If Tune stops the trial now, its actor (and this queue) is gone and
        the controller with its workers follows within seconds: at most a partial epoch, never reported."""
        queue = self._training_actor_item_queue
        while True:
            try:
                if queue.empty():
                    return
            except Exception:  # the queue died with the trial's actor: the trial is being stopped
                return
            time.sleep(0.05)


def run_data_parallel_trial(spec: SweepSpec, trial: TrialSpec, out_dir: Path, home: str) -> None:
    """Train `trial` on `spec.resources.workers_per_trial` workers; returns when it is done (or raises).

    The TorchTrainer runs in a zero-CPU task of its own whose environment names this cluster (RAY_ADDRESS),
    inherited by Ray Train's controller and its placement-group cleaner: when ASHA (or a stop) ends the
    trial, Tune kills this actor and with it the controller, and the cleaner, looking the controller up
    through Ray's state API, must reach THIS cluster to see it gone and free the workers' reservation.
    Without the address it looks for "the" local cluster, fails where several run (or picks a stale one),
    and the reservation is never freed: the next data-parallel trial waits for it forever."""
    import ray

    callback = EpochsOnceCallback()  # made here: it binds to this trial's Tune session
    address = ray.get_runtime_context().gcs_address
    fit = ray.remote(num_cpus=0)(_fit).options(runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    ray.get(
        fit.remote(spec.model_dump(mode="json"), trial.model_dump(mode="json"), str(out_dir), home, callback)
    )


def _fit(sweep: dict[str, Any], trial: dict[str, Any], out_dir: str, home: str, callback: Any) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = SweepSpec.model_validate(sweep)
    res = spec.resources
    use_gpu = res.gpus > 0
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"trial": trial, "out_dir": out_dir, "home": home},
        scaling_config=ScalingConfig(
            num_workers=res.workers_per_trial,
            use_gpu=use_gpu,
            resources_per_worker=worker_resources(spec),
            placement_strategy=res.placement.upper(),
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=out_dir,
            callbacks=[callback],
            # A dead worker restarts the group (resuming from the newest checkpoint); past this many the
            # trial fails and Tune's own max_failures decides.
            failure_config=FailureConfig(max_failures=max(spec.max_failures, 0)),
        ),
    )
    trainer.fit()


def worker_loop(config: dict[str, Any]) -> None:
    """One data-parallel worker (Ray Train has set up torch.distributed): the trainer, as in any trial."""
    import ray
    import ray.train

    from trainers.train import run_trial

    use_home(config["home"])  # same data, weights and feature cache on every worker
    trial = TrialSpec.model_validate(config["trial"])
    out_dir = Path(config["out_dir"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    # Where each rank runs (node, pid): for `frost status`-style questions and the placement tests.
    atomic_write_json(
        out_dir / "workers" / f"rank-{rank}.json",
        {
            "rank": rank,
            "world_size": context.get_world_size(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        },
    )
    with trial_log(out_dir) if rank == 0 else contextlib.nullcontext():
        run_trial(trial, out_dir, TrainReporter(reported_up_to=0))
