"""The sweep driver: SweepSpec -> Ray Tune Tuner (fit, or restore when the sweep exists) -> SweepSummary.

It wires the parts that each answer one question:
- service/project.py: the sweep's folder, its one-driver lock, the `--force` archive;
- service/workers/trainable.py: what runs inside a Tune worker (one trial);
- service/cluster/runtime.py: starting or attaching to Ray, SIGTERM, where Ray's output goes;
- service/tracking/: MLflow, one run per trial (a Tune callback; the driver is the single writer);
- service/status.py and service/results.py: the sweep as its storage tells it, typed.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from service import timeline
from service.cluster.runtime import (
    check_cluster,
    check_trials_fit,
    library_logs_to,
    ray_session,
    sigterm_stops_gracefully,
)
from service.console import configure_logging, print_summary
from service.live import LiveView
from service.plots import plot_sweep
from service.project import check_private, check_same_spec, make_folder, project_root, sweep_lock
from service.results import FATE_STATE, SweepSummary, TrialRow, best_value
from service.status import sweep_status
from service.sweep_folder import SPEC_FILE, TRACKING_FILE, SweepFolder
from service.tracking.callback import MlflowTrackingCallback
from service.tracking.reads import attach_to_parent
from service.tracking.uris import default_tracking_uri, embedded_artifact_root, mlflow_ui_command
from service.workers.trainable import frost_trainable, trial_epochs, trial_identity
from sweeps.space import (
    param_space,
    ranking,
    resources,
    run_config_kwargs,
    searched_config,
    storage_path,
    trial_spec_for,
    tune_config_kwargs,
)
from sweeps.spec import SweepSpec, key_paths
from trainers.logs import log


def sweep_dir(spec: SweepSpec, root: Path) -> Path:
    """The local directory of the sweep's own state (trial dirs, tracking map); Tune's too when local."""
    storage = storage_path(spec, root / "sweeps")
    base = Path(storage) if "://" not in storage else root / "sweeps"
    return base / spec.name


def run_sweep(
    spec: SweepSpec,
    root: str | Path | None = None,
    address: str | None = None,
    force: bool = False,
    verbose: bool = False,
    report: bool = True,
) -> SweepSummary:
    """Run (or resume) a sweep to the end; returns its summary (`frost run --json` prints its JSON).
    With `report`, the sweep's report (service/report/) is written at the end."""
    configure_logging(verbose)
    check_cluster(address)  # before anything is prepared: an unreachable cluster costs seconds, not minutes
    home = project_root(root)
    directory = sweep_dir(spec, home)
    check_private(home, directory.parent, directory)
    make_folder(directory)
    with sweep_lock(directory):
        check_same_spec(spec, directory, force)
        status = sweep_status(directory, spec)
        if status.state == "COMPLETE":
            log.info("sweep '%s' is already complete: nothing to run (frost status %s)", spec.name, spec.name)
            print_summary(status, _browse(status.tracking_uri or default_tracking_uri(home), home))
            return status
        # The data and builtin weights are checked (torch imported, the data set read) while Ray starts: the
        # two overlap, and a bad data set is still an error before any trial starts.
        inputs = InBackground(prepare_inputs, spec)
        summary = _fit(spec, home, directory, address, verbose, inputs)
    if report:
        write_sweep_report(directory)
        timeline.mark("report written")
    return summary


def write_sweep_report(directory: Path) -> None:
    """Best effort: a sweep that ran is not failed by its report (`frost report NAME` writes it again)."""
    from service.report.write import report_sweep

    try:
        _, path = report_sweep(directory)
        log.info("report: %s", path)
    except Exception as exc:
        log.warning(
            "report: not written (%s: %s); run `frost report %s`", type(exc).__name__, exc, directory.name
        )


class InBackground:
    """`fn(*args)` in a daemon thread (a failure elsewhere need not wait for it); `result()` joins it and
    raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._error: BaseException | None = None
        self._value: Any = None

        def run() -> None:
            try:
                self._value = fn(*args)
            except BaseException as exc:  # handed to result(), in the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"frost-{fn.__name__}", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _fit(
    spec: SweepSpec, home: Path, directory: Path, address: str | None, verbose: bool, inputs: InBackground
) -> SweepSummary:
    tracking_uri = spec.tracking.uri or default_tracking_uri(home)
    callback = tracking_callback(spec, directory, tracking_uri)
    with (
        library_logs_to(directory / "driver.log", verbose),
        ray_session(address, home, verbose, state_api=spec.resources.workers_per_trial > 1),
        sigterm_stops_gracefully(),
    ):
        timeline.mark("Ray started")
        inputs.result()
        timeline.mark("data and builtin weights checked")
        fits = check_trials_fit(spec, address)
        if spec.resources.workers_per_trial > 1:
            log.info(
                "trials of %d data-parallel workers (Ray Train): %d at once on this cluster",
                spec.resources.workers_per_trial,
                fits,
            )
        # Tune's strict check wants the ranking metric in EVERY result, but AP exists only on evaluated
        # epochs (eval.every > 1): Tune would end the sweep at the first unevaluated epoch. The spec's own
        # validation already checks the metric name and that ASHA's rungs fall on evaluated epochs.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        tuner = build_tuner(spec, home, callback, verbose)
        timeline.mark("Tuner built")
        results = tuner.fit()
        timeline.mark("Tuner.fit returned (tracking drained)")
    timeline.mark("Ray shut down")
    summary = summarize(spec, results, directory, tracking_uri)
    plot = plot_sweep(directory, summary.metric, summary.mode, spec.searched_paths)
    if plot is not None:
        summary.plot = str(plot)
        attach_to_parent(tracking_uri, summary.parent_run_id, plot)
    if summary.cache_bytes:
        cache = {"cache_build_s": summary.cache_build_s, "cache_bytes": float(summary.cache_bytes)}
        attach_to_parent(tracking_uri, summary.parent_run_id, metrics=cache)
    timeline.mark("plot drawn and attached")
    print_summary(summary, _browse(tracking_uri, home))
    timeline.mark("summary printed")
    return summary


def _browse(tracking_uri: str, home: Path) -> str:
    return mlflow_ui_command(tracking_uri, str(home / "mlartifacts"))


def tracking_callback(spec: SweepSpec, directory: Path, tracking_uri: str) -> MlflowTrackingCallback:
    """The MLflow callback of a fresh sweep. On `Tuner.restore`, Ray Tune does NOT use this one: it unpickles
    the callback saved in the experiment state (ray#41364), so everything it needs must survive pickling and
    be re-read from storage (the tracker re-opens `tracking.json`)."""
    return MlflowTrackingCallback(
        state_path=str(directory / TRACKING_FILE),
        tracking_uri=tracking_uri,
        experiment=spec.experiment_name,
        sweep_name=spec.name,
        spec_yaml=(directory / SPEC_FILE).read_text(),
        spec_hash=spec.digest(),
        search_space={path: str(sampler) for path, sampler in spec.search.items()},
        params_fn=functools.partial(trial_identity, spec),
        max_epochs=functools.partial(trial_epochs, spec),
        artifact_root=embedded_artifact_root(tracking_uri),
        log_final_checkpoint=spec.checkpoint_artifacts,
    )


def prepare_inputs(spec: SweepSpec) -> None:
    """Build and check, once in the driver, what every trial shares: the dataset and builtin weights.

    Bad data is a user error before any trial starts (exit 2, nothing lost), and concurrent trials do not race
    to generate data or pretrain the same classifier.
    """
    from trainers.data import load_datasets
    from trainers.synth.pretrain import ensure_builtin_classifier

    seen_data: set[str] = set()
    seen_weights: set[str] = set()
    for trial in (trial_spec_for(spec, config) for config in representative_configs(spec)):
        key = trial.data.model_dump_json()
        if key not in seen_data:
            seen_data.add(key)
            train, val = load_datasets(trial.data)
            log.info(
                "data: %d train / %d val images, %d classes",
                len(train),
                len(val),
                train.categories.num_classes,
            )
        if trial.backbone.weights == "builtin" and trial.backbone.name not in seen_weights:
            seen_weights.add(trial.backbone.name)
            path = ensure_builtin_classifier(trial.backbone.name)
            log.info("weights: builtin %s classifier at %s", trial.backbone.name, path)


def representative_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """Configs covering every grid/choice value of data/backbone paths (the inputs trials share)."""
    configs: list[dict[str, Any]] = [{}]
    for key, sampler in spec.search.items():
        if not any(p.startswith(("data.", "backbone.name", "backbone.weights")) for p in key_paths(key)):
            continue
        values = sampler.values() if hasattr(sampler, "values") else []
        configs = [{**c, key: v} for c in configs for v in values] or configs
    return configs


def build_tuner(spec: SweepSpec, root: Path, callback: MlflowTrackingCallback, verbose: bool) -> tune.Tuner:
    directory = sweep_dir(spec, root)
    trainable = tune.with_resources(
        tune.with_parameters(
            frost_trainable,
            sweep=spec.model_dump(mode="json"),
            trials_dir=str(directory / "trials"),
            home=str(root),
        ),
        resources(spec),
    )
    run_kwargs = run_config_kwargs(spec, root / "sweeps")
    experiment = os.path.join(run_kwargs["storage_path"], spec.name)
    if tune.Tuner.can_restore(experiment):
        log.info("resuming sweep '%s' from %s", spec.name, experiment)
        # Restore brings back the run config and callbacks pickled at the first fit, not `callback` above
        # (see tracking_callback); the scheduler re-reads its rungs from asha-state.json (sweeps/asha.py).
        return tune.Tuner.restore(
            experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    metric, mode = ranking(spec)
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(**tune_config_kwargs(spec, SweepFolder(directory).asha_state_path)),
        run_config=tune.RunConfig(
            **run_kwargs,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[callback, LiveView(metric, mode)],
            verbose=2
            if verbose
            else 0,  # Tune's own status table only with --verbose (the LiveView is frost's)
        ),
    )


def summarize(spec: SweepSpec, results: tune.ResultGrid, directory: Path, tracking_uri: str) -> SweepSummary:
    tracking = SweepFolder(directory).tracking
    runs = tracking.trials
    metric, mode = ranking(spec)
    trials = []
    build_s, build_bytes = 0.0, 0
    for index in range(len(results)):
        result = results[index]
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        history = result.metrics_dataframe
        values = history[metric].tolist() if history is not None and metric in history else []
        if history is not None and "cache_bytes" in history:  # each trial reports what it built itself
            build_s += float(history["cache_build_s"].max())
            build_bytes += int(history["cache_bytes"].max())
        fate = runs.get(trial_id, {}).get("fate")
        # After a stop (SIGINT, SIGTERM, `frost stop`) Ray Tune lists a trial it cut off as terminated; the
        # tracker's fate says it was interrupted.
        state = (
            "ERROR" if result.error else FATE_STATE["interrupted" if fate == "interrupted" else "completed"]
        )
        trials.append(
            TrialRow(
                trial_id=trial_id,
                state=state,
                fate=fate,
                epochs=int(metrics.get("epoch", 0)),
                mlflow_run_id=runs.get(trial_id, {}).get("run_id"),
                best=best_value(values, mode),
                config=searched_config(spec, result.config or {}),
                error=str(result.error).splitlines()[0] if result.error else None,
            )
        )
    return SweepSummary(
        name=spec.name,
        metric=metric,
        mode=mode,
        trials=trials,
        expected_trials=spec.trial_count(),
        tracking_uri=tracking_uri,
        experiment=spec.experiment_name,
        parent_run_id=tracking.parent_run_id,
        cache_build_s=build_s,
        cache_bytes=build_bytes,
    )
