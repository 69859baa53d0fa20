"""The catalog's LVIS smoke sweep through `frost run` on the embedded default (local Ray on loopback, SQLite
MLflow): the built-in data in LVIS format, generated on first use, is evaluated with LVIS's federated rules in
every trial, and AR300 reaches MLflow."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import tracked_once
from mlflow.tracking import MlflowClient

from service.cli import main
from sweeps.spec import load_sweep_spec
from trainers.data import load_coco
from trainers.evaluate import metric_keys
from trainers.federated import is_federated

pytestmark = pytest.mark.integration

SPEC = Path(__file__).resolve().parents[2] / "sweeps" / "catalog" / "lvis_smoke.yaml"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis") / "root"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FROST_HOME", str(root))  # `frost run --root` exports it; restored afterwards
        out, err = io.StringIO(), io.StringIO()
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = main(["run", str(SPEC), "--root", str(root), "--json"])
        data_root = load_sweep_spec(SPEC).trial.data.resolved_root()
    assert code == 0, err.getvalue()[-3000:]
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"summary": summary, "root": root, "data_root": data_root}


def test_every_trial_is_evaluated_the_lvis_way(sweep):
    summary = sweep["summary"]
    assert summary["name"] == "lvis-smoke" and len(summary["trials"]) == 2
    assert {t["config"]["backbone.freeze"] for t in summary["trials"]} == {"frozen", "finetune"}
    assert all(t["state"] == "TERMINATED" and t["epochs"] == 2 for t in summary["trials"])
    # The generated data carries LVIS's lists (so `eval.protocol: auto` chose lvis) ...
    assert is_federated(load_coco(sweep["data_root"] / "annotations" / "val.json"))
    trials = sorted((sweep["root"] / "sweeps" / "lvis-smoke" / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        for epoch in (1, 2):
            evaluated = trial / "eval" / f"epoch-{epoch:04d}"
            metrics = json.loads((evaluated / "metrics.json").read_text())
            # ... and the metrics are LVIS's: AR at 300 per image, no AR100.
            assert tuple(metrics) == metric_keys(300)
            assert all(-1.0 <= value <= 1.0 for value in metrics.values())
        per_image = Counter(d["image_id"] for d in json.loads((evaluated / "detections.json").read_text()))
        assert per_image and set(per_image) <= set(range(1, 17))  # the 16 val images


def test_mlflow_holds_ar300_per_epoch(sweep):
    summary = sweep["summary"]
    runs = tracked_once(summary, "lvis-smoke")
    client = MlflowClient(summary["tracking_uri"])
    for run in runs.values():
        assert [m.step for m in client.get_metric_history(run.info.run_id, "AR300")] == [1, 2]
        assert client.get_metric_history(run.info.run_id, "AR100") == []
        assert run.data.params["data.synth.format"] == "lvis"
