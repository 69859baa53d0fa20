"""MLflow tracking of sweeps: one parent run, exactly one child run per trial, through restarts and outages.

Real components throughout: a Ray Tune sweep of a tiny function trainable (fake per-epoch metrics), MLflow on
SQLite, and a real `mlflow server` on PostgreSQL (skipped without FROST_TEST_POSTGRES).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler

from service.tracking.callback import MlflowTrackingCallback
from service.tracking.tracker import SweepTracker
from service.tracking.uris import default_tracking_uri, mlflow_ui_command

pytestmark = pytest.mark.integration

# Ray workers cannot import this test module (tests/ is not a package): ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

EPOCHS = 4
# AP at epoch 1 per trial. Trials run one at a time (max_concurrent_trials=1) in this order, which makes
# ASHA (grace 1, reduction 2) deterministic: "weak" and "weaker" fall below the rung-1 cutoff set by the
# trials before them and are stopped at epoch 1; "broken" passes rung 1 and raises in epoch 2.
FIRST_AP = {"good": 0.9, "weak": 0.2, "weaker": 0.1, "broken": 0.95}
ASHA_NAMES = list(FIRST_AP)
EXPECTED = {  # name -> (fate, status, last epoch)
    "good": ("completed", "FINISHED", 4),
    "weak": ("stopped", "FINISHED", 1),
    "weaker": ("stopped", "FINISHED", 1),
    "broken": ("error", "FAILED", 1),
}
SPEC_YAML = "name: tiny\nspace:\n  name: [good, weak, weaker, broken]\n"


def fake_metrics(name: str, epoch: int) -> dict[str, float]:
    """A trainer-shaped report (trainers/reporting.py keys), deterministic in (trial, epoch)."""
    ap = FIRST_AP.get(name, 0.5) + 0.01 * (epoch - 1)
    return {
        "epoch": epoch,
        "loss": round(2.0 / epoch, 6),
        "lr": 0.02,
        "images_per_s": 40.0,
        "step_time_s": 0.2,
        "epoch_time_s": 1.5,
        "peak_memory_mb": 512.0,
        "trainable_params": 1000,
        "total_params": 5000,
        **{key: ap for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AP_r", "AP_c", "AP_f")},
    }


def fake_trainable(config: dict) -> None:
    """Reports one result + checkpoint per epoch; resumes after its checkpoint like the real trainer."""
    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text()) + 1
    for epoch in range(start, EPOCHS + 1):
        time.sleep(config.get("sleep_s", 0.0))
        if config["name"] == "broken" and epoch == 2:
            raise ValueError("synthetic failure in epoch 2")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            tune.report(
                fake_metrics(config["name"], epoch), checkpoint=tune.Checkpoint.from_directory(folder)
            )


def trial_params(config: dict) -> tuple[dict, dict, str]:
    """What the lead's params_fn returns: flattened spec as params, tags to group by, a readable name."""
    return (
        {"name": config["name"], "train.epochs": EPOCHS},
        {"frost.freeze_mode": "frozen", "frost.seed": "0"},
        f"trial-{config['name']}",
    )


def make_callback(state_path: Path, uri: str, experiment: str) -> MlflowTrackingCallback:
    return MlflowTrackingCallback(
        state_path,
        uri,
        experiment=experiment,
        sweep_name="tiny",
        spec_yaml=SPEC_YAML,
        spec_hash="abc123",
        search_space={"name": "grid_search(['good', 'weak', 'weaker', 'broken'])"},
        params_fn=trial_params,
        max_epochs=EPOCHS,
        log_final_checkpoint=True,
        flush_timeout_s=60,
        max_backoff_s=1.0,
    )


def run_asha_sweep(tmp_path: Path, uri: str, experiment: str) -> None:
    callback = make_callback(tmp_path / "sweep" / "tracking.json", uri, experiment)
    tuner = tune.Tuner(
        fake_trainable,
        param_space={"name": tune.grid_search(ASHA_NAMES)},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="epoch", metric="AP", mode="max", max_t=EPOCHS, grace_period=1, reduction_factor=2
            ),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name="tiny", storage_path=str(tmp_path / "ray"), callbacks=[callback], verbose=0
        ),
    )
    tuner.fit()


def sweep_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of the experiment, deleted ones included."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("frost.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("frost.kind") != "sweep"]
    return parents, children


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_asha_sweep_recorded(client: MlflowClient, experiment: str) -> None:
    parents, children = sweep_runs(client, experiment)
    # MLflow's UI opens the experiment on its runs table, not the GenAI view (docs/stack.md)
    assert (
        client.get_experiment_by_name(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["frost.spec_hash"] == "abc123"
    assert parent.data.params == {"name": "grid_search(['good', 'weak', 'weaker', 'broken'])"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["sweep.yaml"]

    assert len(children) == len(ASHA_NAMES), [c.info.run_name for c in children]
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {f"trial-{n}" for n in ASHA_NAMES}
    assert len({c.data.tags["frost.trial_id"] for c in children}) == len(ASHA_NAMES)
    for name, (fate, status, last) in EXPECTED.items():
        run = by_name[f"trial-{name}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["frost.freeze_mode"] == "frozen"
        assert run.data.params["name"] == name
        assert (run.data.tags["frost.fate"], run.info.status) == (fate, status), name
        for key in ("loss", "AP", "AP_r", "peak_memory_mb", "epoch"):
            assert steps(client, run.info.run_id, key) == list(range(1, last + 1)), (name, key)
        history = client.get_metric_history(run.info.run_id, "loss")
        assert {m.step: m.value for m in history} == {
            e: fake_metrics(name, e)["loss"] for e in range(1, last + 1)
        }
        assert "training_iteration" not in run.data.metrics  # Tune's bookkeeping is not logged
    assert "stopped at epoch 1 of 4" in by_name["trial-weak"].data.tags["frost.fate_detail"]
    assert (
        "ValueError: synthetic failure in epoch 2" in by_name["trial-broken"].data.tags["frost.fate_detail"]
    )
    # The final checkpoint goes up only when asked (log_final_checkpoint=True here), never for errors.
    good_ckpt = client.list_artifacts(by_name["trial-good"].info.run_id, "checkpoint")
    assert [a.path for a in good_ckpt] == ["checkpoint/epoch"]
    assert client.list_artifacts(by_name["trial-broken"].info.run_id) == []


# --------------------------------------------------------------------------------------------------------
# Embedded store (SQLite)


def test_asha_sweep_is_tracked_one_run_per_trial(tmp_path, ray_runtime, monkeypatch):
    monkeypatch.setenv("FROST_HOME", str(tmp_path / "home"))
    uri = default_tracking_uri(tmp_path / "home")
    run_asha_sweep(tmp_path, uri, "frost-asha")

    client = MlflowClient(uri)
    assert_asha_sweep_recorded(client, "frost-asha")
    exp = client.get_experiment_by_name("frost-asha")
    assert exp.artifact_location == str((tmp_path / "home" / "mlartifacts").resolve())
    state = json.loads((tmp_path / "sweep" / "tracking.json").read_text())
    assert {rec["status"] for rec in state["trials"].values()} == {"FINISHED", "FAILED"}
    assert (tmp_path / "sweep" / "tracking.outbox.jsonl").read_text() == ""  # everything applied


class InterruptAfter(tune.Callback):
    """Sends the driver SIGINT (what Ctrl+C does) once a given trial reported a given epoch.

    Once per test: Tune.restore brings this callback back too, so "already sent" lives in a file.
    """

    def __init__(self, name: str, epoch: int, sent_flag: Path) -> None:
        self.name, self.epoch, self.sent_flag = name, epoch, sent_flag

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (
            not self.sent_flag.exists()
            and trial.config["name"] == self.name
            and result["epoch"] >= self.epoch
        ):
            self.sent_flag.write_text("sent")
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler turns it into a graceful stop


def test_interrupted_sweep_resumes_into_the_same_runs(tmp_path, ray_runtime):
    uri = default_tracking_uri(tmp_path / "home")
    callback = make_callback(tmp_path / "sweep" / "tracking.json", uri, "frost-resume")
    tuner = tune.Tuner(
        fake_trainable,
        param_space={"name": tune.grid_search(["first", "second"]), "sleep_s": 0.3},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name="resume",
            storage_path=str(tmp_path / "ray"),
            callbacks=[callback, InterruptAfter("first", 2, tmp_path / "interrupted")],
            verbose=0,
        ),
    )
    tuner.fit()

    client = MlflowClient(uri)
    parents, children = sweep_runs(client, "frost-resume")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert [(c.info.run_name, c.info.status, c.data.tags["frost.fate"]) for c in children] == [
        ("trial-first", "KILLED", "interrupted")
    ]
    first_id = children[0].info.run_id
    assert steps(client, first_id, "loss")[:2] == [1, 2]

    # Callbacks come back by unpickling (ray#41364): the restored one re-reads tracking.json.
    experiment_path = str(tmp_path / "ray" / "resume")
    assert tune.Tuner.can_restore(experiment_path)
    tune.Tuner.restore(experiment_path, trainable=fake_trainable).fit()

    parents, children = sweep_runs(client, "frost-resume")
    assert [p.info.status for p in parents] == ["FINISHED"]
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == ["trial-first", "trial-second"]  # no second run for "first"
    assert by_name["trial-first"].info.run_id == first_id
    for run in children:
        assert (run.info.status, run.data.tags["frost.fate"]) == ("FINISHED", "completed")
        assert steps(client, run.info.run_id, "loss") == list(range(1, EPOCHS + 1))


def test_second_tracker_reattaches_recorded_runs(tmp_path):
    uri = default_tracking_uri(tmp_path)
    state = tmp_path / "sweep" / "tracking.json"
    with SweepTracker(state, uri, max_backoff_s=0.5) as first:
        parent = first.start_sweep("s", "frost-reattach", "a: 1\n", "h1", {"lr": "loguniform"}, wait_s=60)
        run = first.start_trial("t1", {"lr": 0.1}, {"frost.seed": "0"}, "run-t1", wait_s=60)
        assert parent and run
        assert first.log_epoch("t1", {"loss": 1.0}, 1) and first.log_epoch("t1", {"loss": 0.5}, 2)
        first.mark_interrupted()
        assert first.flush(60)

    client = MlflowClient(uri)
    assert client.get_run(run).info.status == "KILLED"
    with SweepTracker(state, uri, max_backoff_s=0.5) as second:
        assert (
            second.start_sweep("s", "frost-reattach", "a: 1\n", "h1", {"lr": "loguniform"}, wait_s=60)
            == parent
        )
        assert second.start_trial("t1", {"lr": 0.1}, {"frost.seed": "0"}, "run-t1", wait_s=60) == run
        assert client.get_run(run).info.status == "RUNNING"
        assert client.get_run(parent).info.status == "RUNNING"
        assert second.log_epoch("t1", {"loss": 99.0}, 2) is False  # a re-reported epoch is skipped
        assert second.log_epoch("t1", {"loss": 0.25}, 3) is True
        second.end_trial("t1", "completed", None)
        second.end_sweep("FINISHED")
        assert second.flush(60)

    parents, children = sweep_runs(client, "frost-reattach")
    assert [r.info.run_id for r in parents] == [parent] and [r.info.run_id for r in children] == [run]
    history = client.get_metric_history(run, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert client.get_run(run).info.status == "FINISHED"


def test_operations_pending_at_shutdown_are_replayed_by_the_next_driver(tmp_path):
    # A regular file where the store's folder should be: every MLflow call fails (as if the store were down).
    blocker = tmp_path / "store"
    blocker.write_text("")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    state = tmp_path / "sweep" / "tracking.json"
    first = SweepTracker(state, uri, max_backoff_s=0.2)
    assert first.start_sweep("s", "frost-replay", "a: 1\n", "h", {}, wait_s=0) is None
    first.start_trial("t1", {"lr": 0.1}, {}, "run-t1")
    for epoch in (1, 2, 3):
        first.log_epoch("t1", {"loss": 1.0 / epoch}, epoch)
    first.end_trial("t1", "completed", None)
    first.end_sweep("FINISHED")
    assert first.close(timeout=1.0) is False  # nothing could be applied
    assert len((tmp_path / "sweep" / "tracking.outbox.jsonl").read_text().splitlines()) == 7

    blocker.unlink()  # the store is back; a new driver opens the same state file
    with SweepTracker(state, uri, max_backoff_s=0.2) as second:
        assert second.log_epoch("t1", {"loss": 7.0}, 3) is False  # the replayed queue already has epoch 3
        assert second.flush(60)

    client = MlflowClient(uri)
    parents, children = sweep_runs(client, "frost-replay")
    assert len(parents) == 1 and len(children) == 1
    assert steps(client, children[0].info.run_id, "loss") == [1, 2, 3]
    assert children[0].info.status == "FINISHED" and parents[0].info.status == "FINISHED"


def test_callback_pickles_without_its_tracker_and_rereads_state(tmp_path):
    uri = default_tracking_uri(tmp_path)
    callback = make_callback(tmp_path / "sweep" / "tracking.json", uri, "frost-pickle")
    callback.setup()
    tracker = callback.tracker
    run = tracker.start_trial("t1", {"lr": 0.1}, {}, "run-t1", wait_s=60)
    tracker.log_epoch("t1", {"loss": 1.0}, 1)
    assert tracker.flush(60)
    parent = tracker.parent_run_id

    blobs = [pickle.dumps(callback), cloudpickle.dumps(callback)]  # open threads inside: must not matter
    tracker.close()
    for blob in blobs:
        clone = pickle.loads(blob)
        assert clone._tracker is None
        assert clone.tracker is not tracker
        assert (clone.tracker.parent_run_id, clone.tracker.run_id("t1")) == (parent, run)
        assert clone.tracker.log_epoch("t1", {"loss": 5.0}, 1) is False  # last step re-read from the file
        clone.tracker.close()


def test_ui_command_points_at_the_embedded_store(tmp_path):
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    command = mlflow_ui_command(uri)
    assert command.startswith(f"mlflow ui --backend-store-uri {uri} ")
    assert f"--default-artifact-root {tmp_path.resolve()}/mlartifacts" in command
    assert command.endswith("--host 127.0.0.1")
    assert "--default-artifact-root /elsewhere/art " in mlflow_ui_command(uri, "/elsewhere/art")
    assert mlflow_ui_command("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # the server serves the UI


# --------------------------------------------------------------------------------------------------------
# Tracking server (mlflow server on PostgreSQL)


@pytest.fixture
def quick_http_failures(monkeypatch):
    """MLflow's own HTTP retries would hide the outage inside one call; let the tracker's back-off decide."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_asha_sweep_against_tracking_server(tmp_path, ray_runtime, mlflow_server, quick_http_failures):
    run_asha_sweep(tmp_path, mlflow_server.uri, "frost-server-asha")
    assert_asha_sweep_recorded(MlflowClient(mlflow_server.uri), "frost-server-asha")


def test_server_outage_neither_blocks_nor_loses_metrics(tmp_path, mlflow_server, quick_http_failures):
    uri = mlflow_server.uri
    tracker = SweepTracker(tmp_path / "tracking.json", uri, max_backoff_s=1.0)
    try:
        tracker.start_sweep("outage", "frost-outage", "a: 1\n", "h", {}, wait_s=60)
        run = tracker.start_trial("t1", {"lr": 0.1}, {}, "run-t1", wait_s=60)
        for epoch in (1, 2, 3):
            tracker.log_epoch("t1", fake_metrics("good", epoch), epoch)
        assert tracker.flush(60)

        mlflow_server.stop()
        slowest, epoch, outage_end = 0.0, 3, time.monotonic() + 4.0
        while time.monotonic() < outage_end:
            epoch += 1
            began = time.monotonic()
            tracker.log_epoch("t1", fake_metrics("good", epoch), epoch)
            slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.2)
        began = time.monotonic()
        tracker.end_trial("t1", "completed", None)
        tracker.end_sweep("FINISHED")
        slowest = max(slowest, time.monotonic() - began)
        assert slowest < 0.5, f"a driver-side call took {slowest:.2f} s during the outage"
        assert tracker.pending() >= epoch - 3  # buffered, not lost

        buffered = tracker.pending()
        restarted = time.monotonic()
        mlflow_server.start()
        up = time.monotonic()
        assert tracker.flush(90), f"{tracker.pending()} operations still pending after the server came back"
        print(
            f"outage: {buffered} operations buffered, slowest driver call {slowest * 1000:.1f} ms, "
            f"server restart {up - restarted:.1f} s, caught up {time.monotonic() - up:.1f} s after /health"
        )
    finally:
        tracker.close(timeout=5)

    client = MlflowClient(uri)
    assert steps(client, run, "loss") == list(range(1, epoch + 1))
    assert steps(client, run, "AP_f") == list(range(1, epoch + 1))
    finished = client.get_run(run)
    assert finished.info.status == "FINISHED" and finished.data.tags["frost.fate"] == "completed"
