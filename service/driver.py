"""The sweep driver: SweepSpec → Ray Tune Tuner (fit, or restore when the sweep exists) → summary.

The driver is the single MLflow writer (a Tune callback); trials only train and report to Ray Tune. Every trial
trains in its own stable directory `<sweep>/trials/<trial_id>` so that a restarted trial resumes from its own
newest epoch checkpoint, not from the (lagging) experiment-state snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from service.plots import plot_sweep
from service.status import SPEC_FILE, sweep_status
from service.tracking import (
    MlflowTrackingCallback,
    default_tracking_uri,
    embedded_artifact_root,
    mlflow_ui_command,
)
from sweeps.space import (
    param_space,
    ranking,
    resources,
    run_config_kwargs,
    storage_path,
    trial_run_name,
    trial_spec_for,
    trial_tags,
    tune_config_kwargs,
)
from sweeps.spec import SweepSpec, dump_sweep_spec, load_sweep_spec, spec_diff
from trainers.errors import FrostError


def log(message: str) -> None:
    print(f"frost: {message}", file=sys.stderr, flush=True)


def project_root(root: str | Path | None) -> Path:
    """--root, else $FROST_HOME, else ./frost-runs. Exported as FROST_HOME so trials share data and weights."""
    path = Path(root or os.environ.get("FROST_HOME") or "frost-runs").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["FROST_HOME"] = str(path)
    return path


def sweep_dir(spec: SweepSpec, root: Path) -> Path:
    """The local directory of the sweep's own state (trial dirs, tracking map); Tune's too when local."""
    storage = storage_path(spec, root / "sweeps")
    base = Path(storage) if "://" not in storage else root / "sweeps"
    return base / spec.name


# ---------------------------------------------------------------------------------------------- trials
class TuneReporter:
    """The trainer's reporting seam, plugged into Ray Tune: metrics and the epoch checkpoint, every epoch."""

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(dict(metrics), checkpoint=checkpoint)


def frost_trainable(config: dict[str, Any], sweep: dict[str, Any], trials_dir: str, home: str) -> None:
    """One Ray Tune trial: the trainer on the trial's spec, resuming from its own directory when restarted."""
    from trainers.train import run_trial

    os.environ["FROST_HOME"] = home  # the driver's project folder: same data and weights on every worker
    spec = SweepSpec.model_validate(sweep)
    trial = trial_spec_for(spec, config)
    trial_id = tune.get_context().get_trial_id()
    out_dir = Path(trials_dir) / trial_id
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        # Tune saw no checkpoint of this trial: whatever the trial directory holds was never reported.
        run_trial(trial, out_dir, TuneReporter(), reported_up_to=0)
        return
    with checkpoint.as_directory() as restored:
        seen = json.loads((Path(restored) / "metrics.json").read_text()).get("epoch", 0)
        run_trial(trial, out_dir, TuneReporter(), resume_from=Path(restored), reported_up_to=seen)


def trial_epochs(spec: SweepSpec, config: dict[str, Any]) -> int:
    return trial_spec_for(spec, config).train.epochs


def trial_identity(spec: SweepSpec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str]:
    """MLflow params, tags and run name of a trial, from its Tune config."""
    trial = trial_spec_for(spec, config)
    return flatten(trial.model_dump(mode="json")), trial_tags(trial), trial_run_name(trial, list(spec.search))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---------------------------------------------------------------------------------------------- inputs
def prepare_inputs(spec: SweepSpec) -> None:
    """Build and check, once in the driver, what every trial shares: the dataset and builtin weights.

    Bad data is a user error before any trial starts (exit 2, nothing lost), and concurrent trials do not race
    to generate data or pretrain the same classifier.
    """
    from trainers.data import load_datasets

    trials = [trial_spec_for(spec, config) for config in representative_configs(spec)]
    seen_data: set[str] = set()
    seen_weights: set[str] = set()
    for trial in trials:
        key = trial.data.model_dump_json()
        if key not in seen_data:
            seen_data.add(key)
            train, val = load_datasets(trial.data)
            log(f"data: {len(train)} train / {len(val)} val images, {train.categories.num_classes} classes")
        if trial.backbone.weights == "builtin" and trial.backbone.name not in seen_weights:
            from trainers.pretrain import ensure_builtin_classifier

            seen_weights.add(trial.backbone.name)
            log(
                f"weights: builtin {trial.backbone.name} classifier at {ensure_builtin_classifier(trial.backbone.name)}"
            )


def representative_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """Configs covering every grid/choice value of data/backbone paths (the inputs trials share)."""
    configs: list[dict[str, Any]] = [{}]
    for path, sampler in spec.search.items():
        if not path.startswith(("data.", "backbone.name", "backbone.weights")):
            continue
        values = sampler.values() if hasattr(sampler, "values") else []
        configs = [{**c, path: v} for c in configs for v in values] or configs
    return configs


# ---------------------------------------------------------------------------------------------- the sweep
def build_tuner(spec: SweepSpec, root: Path, callback: MlflowTrackingCallback) -> tune.Tuner:
    trials_dir = sweep_dir(spec, root) / "trials"
    trainable = tune.with_resources(
        tune.with_parameters(
            frost_trainable, sweep=spec.model_dump(mode="json"), trials_dir=str(trials_dir), home=str(root)
        ),
        resources(spec),
    )
    run_kwargs = run_config_kwargs(spec, root / "sweeps")
    experiment = os.path.join(run_kwargs["storage_path"], spec.name)
    if tune.Tuner.can_restore(experiment):
        log(f"resuming sweep '{spec.name}' from {experiment}")
        return tune.Tuner.restore(
            experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    metric = ranking(spec)[0]
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(**tune_config_kwargs(spec, sweep_dir(spec, root) / "asha-state.pkl")),
        run_config=tune.RunConfig(
            **run_kwargs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[callback, LiveView(metric, ranking(spec)[1])],
            verbose=1,
        ),
    )


class LiveView(tune.Callback):
    """One line per trial event on stderr: trial, state, epoch, its metric now and its best so far."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.best: dict[str, float] = {}

    def _line(self, trial: Any, state: str, result: dict[str, Any] | None = None) -> None:
        result = result or trial.last_result or {}
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
        best = self.best.get(trial.trial_id)
        best_shown = f" (best {best:.4f})" if best is not None else ""
        config = " ".join(f"{k}={v}" for k, v in trial.config.items())
        log(f"[{trial.trial_id}] {state:<9} epoch {result.get('epoch', 0):>3} {shown}{best_shown}  {config}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            old = self.best.get(trial.trial_id)
            better = old is None or (value > old if self.mode == "max" else value < old)
            self.best[trial.trial_id] = value if better else old
        self._line(trial, "running", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "error")


def start_ray(address: str | None, root: Path) -> bool:
    """Connect to a cluster, or start the embedded runtime; False when this process already had Ray."""
    if ray.is_initialized():
        return False
    env = {"FROST_HOME": str(root)}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # The embedded default: a private local runtime on loopback only, no dashboard.
        # address="local" always starts a new runtime: a bare ray.init() would attach to whatever cluster
        # `ray start` last recorded in /tmp/ray/ray_current_cluster, even a dead one (it then hangs).
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env={"env_vars": env},
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
        )
    return True


def run_sweep(
    spec: SweepSpec,
    root: str | Path | None = None,
    address: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a sweep to the end; returns the summary `frost run --json` prints."""
    root = project_root(root)
    directory = sweep_dir(spec, root)
    directory.mkdir(parents=True, exist_ok=True)
    with sweep_lock(directory):
        return _run_sweep(spec, root, directory, address, force)


@contextlib.contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """One driver per sweep: running or resuming a sweep that a live driver runs is refused (two drivers would
    fight over its trials, runs and rungs). An OS lock beside the sweep: a driver that dies, even by SIGKILL,
    releases it."""
    path = directory.parent / f".{directory.name}.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another driver"
        handle.close()
        raise FrostError(
            f"sweep '{directory.name}' is being run by {holder}; wait for it, or stop it first "
            f"(frost stop {directory.name} for a Ray Job, else that driver)"
        ) from None
    try:
        handle.truncate(0)
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _run_sweep(
    spec: SweepSpec, root: Path, directory: Path, address: str | None, force: bool
) -> dict[str, Any]:
    check_same_spec(spec, directory, force)
    metric, mode = ranking(spec)
    status = sweep_status(directory, metric, mode, spec.trial_count(), list(spec.search))
    if status["state"] == "COMPLETE":
        log(f"sweep '{spec.name}' is already complete: nothing to run (frost status {spec.name})")
        summary = {**status, "experiment": spec.tracking.experiment or spec.name, "ok": True}
        summary["best"] = best_trial(summary["trials"], metric, mode)
        print_summary(summary, summary["tracking_uri"] or default_tracking_uri(root), root)
        return summary
    prepare_inputs(spec)

    tracking_uri = spec.tracking.uri or default_tracking_uri(root)
    experiment = spec.tracking.experiment or spec.name
    callback = MlflowTrackingCallback(
        state_path=str(directory / "tracking.json"),
        tracking_uri=tracking_uri,
        experiment=experiment,
        sweep_name=spec.name,
        spec_yaml=(directory / SPEC_FILE).read_text(),
        spec_hash=spec.digest(),
        search_space={path: str(sampler) for path, sampler in spec.search.items()},
        params_fn=functools.partial(trial_identity, spec),
        max_epochs=functools.partial(trial_epochs, spec),
        artifact_root=embedded_artifact_root(tracking_uri),
        log_final_checkpoint=spec.checkpoint_artifacts,
    )
    started = start_ray(address, root)
    try:
        with sigterm_stops_gracefully():
            results = build_tuner(spec, root, callback).fit()
    finally:
        if started:
            ray.shutdown()
    summary = summarize(spec, results, directory, tracking_uri, experiment)
    plot = plot_sweep(directory, metric, mode, list(spec.search))
    if plot is not None:
        summary["plot"] = str(plot)
        attach_to_parent(tracking_uri, summary["parent_run_id"], plot)
    print_summary(summary, tracking_uri, root)
    return summary


def attach_to_parent(tracking_uri: str, parent_run_id: str | None, path: Path) -> None:
    """Best effort: the sweep's plot on its MLflow parent run (it stays beside the sweep either way)."""
    if not parent_run_id:
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).log_artifact(parent_run_id, str(path))
    except Exception as exc:  # a tracking server that is down must not fail a finished sweep
        log(
            f"tracking: could not attach {path.name} to the sweep's run ({type(exc).__name__}); it is at {path}"
        )


@contextlib.contextmanager
def sigterm_stops_gracefully() -> Iterator[None]:
    """SIGTERM (`frost stop`, a Kubernetes pod ending) becomes Ray Tune's own graceful stop (SIGUSR1): trials
    stop, their runs are marked interrupted, not left RUNNING, and the sweep resumes later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        log("SIGTERM: stopping the sweep (resume it with frost resume / frost submit)")
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_same_spec(spec: SweepSpec, directory: Path, force: bool = False) -> None:
    """A sweep's identity is its name: a different spec under the same name is refused, not mixed in.

    With `force`, the old sweep's folder is moved aside (kept whole, under `.replaced/` beside it; its MLflow
    runs stay, tagged with the old spec hash) and the new spec starts afresh under the name.
    """
    saved = directory / SPEC_FILE
    if saved.exists():
        previous = load_sweep_spec(saved)
        if previous.digest() == spec.digest():
            return
        diff = "\n".join(f"  {line}" for line in spec_diff(previous, spec))
        if not force:
            raise FrostError(
                f"sweep '{spec.name}' already exists in {directory} with a different spec:\n{diff}\n"
                "give the sweep another name, or pass --force to start it afresh (the old one is kept aside)"
            )
        remote = [s for s in (previous.storage, spec.storage) if s and "://" in s]
        if remote:
            raise FrostError(
                f"--force: sweep '{spec.name}' keeps its Ray Tune state in remote storage ({remote[0]}); "
                "move or delete it there first, or give the sweep another name"
            )
        archive = (
            directory.parent
            / ".replaced"
            / f"{spec.name}-{previous.digest()}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        archive.parent.mkdir(parents=True, exist_ok=True)
        directory.rename(archive)
        directory.mkdir(parents=True)
        log(
            f"--force: sweep '{spec.name}' changed:\n{diff}\nthe old sweep is kept in {archive}; starting afresh"
        )
    dump_sweep_spec(spec, saved)


def summarize(
    spec: SweepSpec, results: tune.ResultGrid, directory: Path, tracking_uri: str, experiment: str
) -> dict[str, Any]:
    tracking = _read_json(directory / "tracking.json")
    runs = tracking.get("trials", {})
    metric, mode = ranking(spec)
    trials = []
    for result in results:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        trial_id = trial_id or Path(result.path).name
        history = result.metrics_dataframe
        values = (
            [v for v in history[metric].tolist() if v == v]
            if history is not None and metric in history
            else []
        )
        best = (max(values) if mode == "max" else min(values)) if values else None
        fate = runs.get(trial_id, {}).get("fate")
        # After a stop (SIGINT, SIGTERM, `frost stop`) Ray Tune lists a trial it cut off as terminated; the
        # tracker's fate says it was interrupted.
        state = "ERROR" if result.error else ("INTERRUPTED" if fate == "interrupted" else "TERMINATED")
        trials.append(
            {
                "trial_id": trial_id,
                "state": state,
                "fate": fate,
                "epochs": int(result.metrics.get("epoch", 0)) if result.metrics else 0,
                "mlflow_run_id": runs.get(trial_id, {}).get("run_id"),
                metric: best,
                "config": {k: v for k, v in (result.config or {}).items() if k in spec.search},
                "error": str(result.error).splitlines()[0] if result.error else None,
            }
        )
    return {
        "name": spec.name,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "parent_run_id": tracking.get("parent_run_id"),
        "metric": metric,
        "best": best_trial(trials, metric, mode),
        "trials": trials,
        "ok": not any(t["state"] == "ERROR" for t in trials),
        # Trials cut off, or never started (Ray Tune leaves pending trials out of its results after a stop).
        "interrupted": any(t["state"] == "INTERRUPTED" for t in trials) or len(trials) < spec.trial_count(),
    }


def best_trial(trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [t for t in trials if isinstance(t.get(metric), (int, float))]
    return (max if mode == "max" else min)(scored, key=lambda t: t[metric]) if scored else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def print_summary(summary: dict[str, Any], tracking_uri: str, root: Path) -> None:
    metric = summary["metric"]
    log(f"sweep '{summary['name']}': {len(summary['trials'])} trials")
    for trial in summary["trials"]:
        value = trial[metric]
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        log(
            f"  {trial['trial_id']}  {trial['state']:<10} epochs {trial['epochs']:>3}  {metric} {shown}  {trial['config']}"
        )
    if summary.get("interrupted"):
        log(f"interrupted: trials not finished are kept; continue with `frost resume {summary['name']}`")
    if summary.get("plot"):
        log(f"plot: {summary['plot']}")
    if summary["best"]:
        best = summary["best"]
        log(
            f"best: {best['trial_id']} {metric}={best[metric]:.4f} {best['config']} (MLflow run {best['mlflow_run_id']})"
        )
    log(
        f"browse: {mlflow_ui_command(tracking_uri, str(root / 'mlartifacts'))}  (experiment '{summary['experiment']}')"
    )
