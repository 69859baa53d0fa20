"""`frost run` end to end: real Ray Tune (local, loopback), real trainer, real MLflow (SQLite)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from helpers import run_cli, tiny_asha_sweep
from mlflow.tracking import MlflowClient

from service.cli import main

pytestmark = pytest.mark.integration

TINY_SWEEP = tiny_asha_sweep("tiny-asha")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweep")
    spec = base / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SWEEP))
    root = base / "root"
    code, out, err = run_cli(["run", str(spec), "--root", str(root), "--json"])
    return {"code": code, "stdout": out, "stderr": err, "root": root, "spec": spec}


def test_run_prints_the_json_summary_last(sweep):
    assert sweep["code"] == 0, sweep["stderr"][-3000:]
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    assert summary["name"] == "tiny-asha" and summary["experiment"] == "tiny-asha"
    assert summary["tracking_uri"] == f"sqlite:///{sweep['root']}/mlflow.db"
    assert summary["parent_run_id"]
    assert len(summary["trials"]) == 4
    for trial in summary["trials"]:
        assert {"trial_id", "state", "epochs", "mlflow_run_id", "loss"} <= trial.keys()
    assert "mlflow ui --backend-store-uri" in sweep["stderr"]
    assert "epoch" in sweep["stderr"] and "[" in sweep["stderr"]  # the live view


def test_stdout_holds_only_the_json_summary(sweep):
    """Ray Tune prints its configuration box and "View detailed results ..." on stdout: they go to
    driver.log, so `--json`'s stdout is the summary alone."""
    lines = [line for line in sweep["stdout"].splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["name"] == "tiny-asha", lines[:5]
    driver_log = (sweep["root"] / "sweeps" / "tiny-asha" / "driver.log").read_text()
    assert "Configuration for experiment" in driver_log or "View detailed results" in driver_log


def test_the_console_shows_frost_lines_and_ray_output_goes_to_the_sweep_log(sweep):
    lines = [line for line in sweep["stderr"].splitlines() if line.strip()]
    foreign = [line for line in lines if not line.startswith(("frost: ", "  "))]
    assert not foreign, foreign[:10]  # no Tune status table, no worker lines ("Checkpoint successfully ...")
    trials = sweep["root"] / "sweeps" / "tiny-asha" / "trials"
    logs = [p.read_text() for p in trials.glob("*/trial.log")]
    assert len(logs) == 4 and all("trial: " in text for text in logs)  # each trial's own lines, kept


def test_the_embedded_runtime_used_a_token_of_the_project_folder_readable_by_its_owner_only(sweep):
    token = sweep["root"] / ".ray-auth-token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ or os.environ["RAY_AUTH_TOKEN_PATH"] != str(
        token
    )  # restored


def test_asha_stops_the_weak_trials_early(sweep):
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    epochs = {trial["config"]["optim.lr"]: trial["epochs"] for trial in summary["trials"]}
    assert epochs[0.05] == 3  # the first to reach each rung is promoted
    assert epochs[1e-9] < 3 and epochs[2e-9] < 3


def test_mlflow_holds_one_parent_and_one_child_per_trial(sweep):
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    client = MlflowClient(summary["tracking_uri"])
    experiment = client.get_experiment_by_name("tiny-asha")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_id == summary["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    assert len(parent) == 1 and len(runs) == 5 and len(children) == 4
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in summary["trials"]}
    assert all(r.info.status != "RUNNING" for r in runs)
    by_id = {t["mlflow_run_id"]: t for t in summary["trials"]}
    for run in children:
        trial = by_id[run.info.run_id]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps == list(range(1, trial["epochs"] + 1))  # every epoch once, no gaps
        assert [m.step for m in client.get_metric_history(run.info.run_id, "AP")] == steps
        fate = run.data.tags["frost.fate"]
        assert fate == ("completed" if trial["epochs"] == 3 else "stopped")
        assert run.data.params["optim.lr"] == str(trial["config"]["optim.lr"])
        assert run.data.params["backbone.freeze"] == "frozen"
        assert "lr=" in run.info.run_name
        # Frozen trials read the feature cache: the tag says so, and agrees with the metric.
        assert run.data.tags["frost.cache_used"] == "true" and run.data.metrics["cache_used"] == 1.0


def test_one_at_a_time_the_trials_share_one_reused_actor(sweep):
    """reuse_actors: each trial runs in the process of the one before it, also after ASHA stopped that one
    (its training thread blocked in tune.report is ended, then the next trial starts there)."""
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    client = MlflowClient(summary["tracking_uri"])
    ordinals = sorted(
        int(client.get_run(t["mlflow_run_id"]).data.metrics["trials_in_process"]) for t in summary["trials"]
    )
    assert ordinals == [1, 2, 3, 4]
    stopped = [t for t in summary["trials"] if t["epochs"] < 3]
    assert stopped and all(t["state"] == "TERMINATED" for t in summary["trials"])


def test_same_name_with_another_spec_is_refused_with_a_diff(sweep, tmp_path, capsys):
    changed = {**TINY_SWEEP, "trial": {**TINY_SWEEP["trial"], "seed": 7}}
    spec = tmp_path / "changed.yaml"
    spec.write_text(yaml.safe_dump(changed))
    assert main(["run", str(spec), "--root", str(sweep["root"])]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "trial.seed: 0 -> 7" in err


def test_running_or_resuming_a_finished_sweep_changes_nothing_and_says_so(sweep, capsys):
    before = sorted(p.name for p in (sweep["root"] / "sweeps/tiny-asha/trials").glob("*/checkpoints/*"))
    assert main(["run", str(sweep["spec"]), "--root", str(sweep["root"]), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert len(summary["trials"]) == 4 and "already complete" in captured.err
    assert main(["resume", "tiny-asha", "--root", str(sweep["root"]), "--json"]) == 0
    assert "already complete" in capsys.readouterr().err
    after = sorted(p.name for p in (sweep["root"] / "sweeps/tiny-asha/trials").glob("*/checkpoints/*"))
    assert before == after
    client = MlflowClient(summary["tracking_uri"])
    experiment = client.get_experiment_by_name("tiny-asha")
    assert len(client.search_runs([experiment.experiment_id])) == 5


def test_status_reads_the_sweep_back_from_storage(sweep, capsys):
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    assert main(["status", "tiny-asha", "--root", str(sweep["root"]), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["name"] == "tiny-asha" and status["state"] == "COMPLETE"
    got = {t["trial_id"]: (t["state"], t["epochs"], t["mlflow_run_id"]) for t in status["trials"]}
    assert got == {t["trial_id"]: (t["state"], t["epochs"], t["mlflow_run_id"]) for t in summary["trials"]}
    assert status["best"]["trial_id"] == summary["best"]["trial_id"]  # the best so far
    best = {t["trial_id"]: t["loss"] for t in status["trials"]}
    for trial in summary["trials"]:
        assert best[trial["trial_id"]] == pytest.approx(trial["loss"])
    assert main(["ls", "--root", str(sweep["root"])]) == 0
    assert capsys.readouterr().out.split() == ["tiny-asha"]
    assert main(["status", "nope", "--root", str(sweep["root"])]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_the_sweep_is_plotted_beside_it_and_on_its_parent_run(sweep, capsys):
    summary = json.loads(sweep["stdout"].strip().splitlines()[-1])
    plot = sweep["root"] / "sweeps" / "tiny-asha" / "sweep.png"
    assert summary["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert f"plot: {plot}" in sweep["stderr"]
    client = MlflowClient(summary["tracking_uri"])
    report = ["ap_per_epoch.png", "ap_vs_share.png", "report.md", "resources.png"]  # docs/report.md
    logged = [a.path for a in client.list_artifacts(summary["parent_run_id"])]
    assert logged == [*report, "sweep.png", "sweep.yaml"]
    plot.unlink()
    assert main(["status", "tiny-asha", "--root", str(sweep["root"]), "--plot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(plot) and plot.exists()


def test_a_bad_dataset_is_refused_before_any_trial_starts(tmp_path):
    """The data are checked while Ray starts (service/driver.py): a broken annotation file is still exit 2
    naming the file, and no trial ran."""
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "images").mkdir()
    (data / "annotations" / "train.json").write_text("{not json")
    (data / "annotations" / "val.json").write_text("{not json")
    sweep = tiny_asha_sweep("bad-data")
    sweep["trial"]["data"] = {"source": "coco", "root": str(data)}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(sweep))
    root = tmp_path / "root"
    code, _, err = run_cli(["run", str(spec), "--root", str(root)])
    assert code == 2, err[-2000:]
    assert "train.json" in err and "Traceback" not in err
    assert not list((root / "sweeps" / "bad-data").glob("trials/*"))
