"""What runs inside a Ray Tune worker: one trial of a sweep, trained by trainers/ and reported to Tune.

Every trial trains in its own stable directory `<sweep>/trials/<trial_id>`, so that a restarted trial resumes
from its own newest epoch checkpoint, not from the (lagging) experiment-state snapshot (docs/stack.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from service.workers.trial_log import trial_log
from sweeps.space import trial_run_name, trial_spec_for, trial_tags
from sweeps.spec import SweepSpec
from trainers.files import flatten, read_json_or
from trainers.home import use_home
from trainers.reporting import ReplayingReporter


class TuneReporter(ReplayingReporter):
    """The trainer's reporting seam, plugged into Ray Tune: metrics and the epoch checkpoint, every epoch.
    On resume, the epochs Ray Tune never received (the driver died between a checkpoint and its report) are
    replayed, so the scheduler and the tracker see every epoch once (they drop what they already have)."""

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(dict(metrics), checkpoint=checkpoint)


def frost_trainable(config: dict[str, Any], sweep: dict[str, Any], trials_dir: str, home: str) -> None:
    """One Ray Tune trial: the trainer on the trial's spec, resuming from its own directory when restarted."""
    from trainers.train import run_trial

    use_home(home)  # the driver's project folder: same data and weights on every worker
    spec = SweepSpec.model_validate(sweep)
    trial = trial_spec_for(spec, config)
    out_dir = Path(trials_dir) / tune.get_context().get_trial_id()
    if spec.resources.workers_per_trial > 1:
        from service.workers.data_parallel import run_data_parallel_trial

        run_data_parallel_trial(spec, trial, out_dir, home)
        return
    checkpoint = tune.get_checkpoint()
    with trial_log(out_dir):
        if checkpoint is None:
            # Tune saw no checkpoint of this trial: whatever the trial directory holds was never reported.
            run_trial(trial, out_dir, TuneReporter(reported_up_to=0))
            return
        with checkpoint.as_directory() as restored:
            seen = read_json_or(Path(restored) / "metrics.json", {}).get("epoch", 0)
            run_trial(trial, out_dir, TuneReporter(reported_up_to=int(seen)), resume_from=Path(restored))


def trial_epochs(spec: SweepSpec, config: dict[str, Any]) -> int:
    return trial_spec_for(spec, config).train.epochs


def trial_identity(spec: SweepSpec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str]:
    """MLflow params, tags and run name of a trial, from its Tune config."""
    trial = trial_spec_for(spec, config)
    return (
        flatten(trial.model_dump(mode="json")),
        trial_tags(trial),
        trial_run_name(trial, spec.searched_paths),
    )
