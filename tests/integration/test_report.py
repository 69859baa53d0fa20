"""`frost report` on a real small sweep: real Ray Tune (local), real trainer, real MLflow (SQLite).

2 freeze modes x 2 FPN widths at a working learning rate, and the same at a vanishing one that ASHA (on loss,
grace 1) stops at rung 1 once a working trial has set the cutoff: every trial's figures in the report equal
its MLflow run's, stopped trials stand apart, and a trial whose folder is gone (as when it ran on another node
without shared storage) is still reported, from MLflow alone.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import yaml
from helpers import run_cli, tiny_sweep
from mlflow.tracking import MlflowClient

from service.report.rows import TABLE_METRICS

pytestmark = pytest.mark.integration

NAME = "tiny-report"
SPEC = tiny_sweep(
    NAME,
    lrs=[0.05, 1.0e-9],
    epochs=2,
    concurrent=1,
    warmup_steps=0,
    scheduler={"type": "asha", "metric": "loss", "mode": "min", "grace_period": 1, "reduction_factor": 2},
)
SPEC["search"] = {
    "optim.lr": {"grid": [0.05, 1.0e-9]},
    "backbone.freeze": {"grid": ["frozen", "finetune"]},
    "neck.fpn_channels": {"grid": [16, 32]},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    spec = base / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    root = base / "root"
    code, out, err = run_cli(["run", str(spec), "--root", str(root), "--json"])
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    client = MlflowClient(summary["tracking_uri"])
    runs = {
        r.data.tags["frost.trial_id"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name(NAME).experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'",
        )
    }
    return {"root": root, "summary": summary, "client": client, "runs": runs, "dir": root / "sweeps" / NAME}


def report_json(sweep) -> dict:
    code, out, err = run_cli(["report", NAME, "--root", str(sweep["root"]), "--format", "json"])
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_run_wrote_the_report_and_logged_it_to_the_parent_run(sweep):
    folder = sweep["dir"] / "report"
    files = ("report.md", "ap_vs_share.png", "ap_per_epoch.png", "resources.png", "delta_vs_capacity.png")
    for name in files:
        assert (folder / name).stat().st_size > 0, name
    logged = {a.path for a in sweep["client"].list_artifacts(sweep["summary"]["parent_run_id"])}
    assert set(files) <= logged
    code, out, _ = run_cli(["report", NAME, "--root", str(sweep["root"])])
    assert code == 0 and out.strip().splitlines()[-1] == str(folder / "report.md")


def test_trial_runs_carry_capacity_share_device_and_artifacts(sweep):
    client = sweep["client"]
    finished = [r for r in sweep["runs"].values() if r.data.tags["frost.fate"] == "completed"]
    assert finished
    for run in sweep["runs"].values():
        tags = run.data.tags
        assert len(tags["frost.capacity"]) == 12 and tags["frost.device"] == "cpu"
        share = float(tags["frost.trainable_share"])
        assert share == pytest.approx(run.data.metrics["trainable_share"], abs=1e-4)
        assert (share == 1.0) == (tags["freeze"] == "finetune")
        metrics = run.data.metrics
        assert (
            metrics["head_params"] + (metrics["body_params"] if tags["freeze"] == "finetune" else 0)
            == (metrics["trainable_params"])
        )
    for run in finished:
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"per_class_ap.csv", "trial.yaml", "curves.png", "predictions.png"} <= names, names
    # Same detector, data and head, only freeze mode differs: one capacity; another FPN width: another.
    keys = {
        (t["freeze"], t["fpn_channels"], t["optim.lr"] if "optim.lr" in t else None): t["frost.capacity"]
        for t in (
            dict(r.data.tags, **{"optim.lr": r.data.params["optim.lr"]}) for r in sweep["runs"].values()
        )
    }
    for lr in {k[2] for k in keys}:
        assert keys[("frozen", "16", lr)] == keys[("finetune", "16", lr)] != keys[("frozen", "32", lr)]


def test_table_equals_the_mlflow_runs_and_stopped_trials_stand_apart(sweep):
    data = report_json(sweep)
    runs = sweep["runs"]
    assert data["sweep"] == NAME
    stopped_ids = {tid for tid, r in runs.items() if r.data.tags["frost.fate"] == "stopped"}
    assert stopped_ids, "ASHA stopped no trial: the vanishing learning rate should have been cut at rung 1"
    stopped_rows = [row for row in data["rows"] if row["stopped"]]
    assert {row["trial_id"] for row in stopped_rows} == stopped_ids
    for row in stopped_rows:
        assert row["n"] == 1 and row["epoch"] == 1
        # ASHA's own decision from the sweep's state file, in words (Decision.describe), the dict kept too.
        assert row["decision"].startswith("stopped at rung 1") and row["stop"]["rung"] == 1
        assert row["AP"] == runs[row["trial_id"]].data.metrics["AP"]
    for row in (r for r in data["rows"] if not r["stopped"]):
        members = [
            r
            for tid, r in runs.items()
            if tid not in stopped_ids
            and r.data.tags["frost.capacity"] == row["capacity"]
            and r.data.tags["freeze"] == row["freeze"]
        ]
        assert row["n"] == len(members) >= 1
        for metric in TABLE_METRICS:
            # COCO's -1 (no class of that bucket among the val images) is no score: left out of the mean.
            values = [m.data.metrics[metric] for m in members if m.data.metrics[metric] >= 0]
            expected = statistics.fmean(values) if values else None
            assert row[metric] == pytest.approx(expected), metric
    assert any(row["AP_f"] is None for row in data["rows"])  # the tiny val split has no frequent class
    for delta in data["deltas"]:
        pair = {
            r["freeze"]: r for r in data["rows"] if not r["stopped"] and r["capacity"] == delta["capacity"]
        }
        assert delta["delta"] == pytest.approx(
            pair["frozen"][delta["metric"]] - pair["finetune"][delta["metric"]]
        )
        assert delta["verdict"] == "one seed"  # one seed each: no interval, no verdict
        assert delta["ci_low"] is None and delta["ci_high"] is None
        assert delta["paired"] is False and delta["n_pairs"] == 0
    assert data["trends"] and {t["verdict"] for t in data["trends"]} == {"unjudged"}
    assert "n=1" in data["finding"] and "stopped early are listed apart" in data["finding"]
    assert "No comparison has 2 seeds on each side" in data["finding"]


def test_a_trial_whose_folder_is_gone_is_reported_from_mlflow(sweep):
    finished = sorted(tid for tid, r in sweep["runs"].items() if r.data.tags["frost.fate"] == "completed")
    gone = finished[0]
    shutil.rmtree(sweep["dir"] / "trials" / gone)
    data = report_json(sweep)
    run = sweep["runs"][gone]
    row = next(
        r
        for r in data["rows"]
        if not r["stopped"]
        and r["capacity"] == run.data.tags["frost.capacity"]
        and r["freeze"] == run.data.tags["freeze"]
    )
    assert row["n"] == 1 and row["AP"] == run.data.metrics["AP"]


def test_unknown_sweep_exits_2(sweep):
    code, _, err = run_cli(["report", "no-such-sweep", "--root", str(sweep["root"])])
    assert code == 2 and "no sweep named 'no-such-sweep'" in err
