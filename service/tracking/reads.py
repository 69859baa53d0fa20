"""What the report and the driver's end ask of MLflow besides the tracker's writes: a sweep's child runs, a
trial's metric history, files and metrics on the sweep's parent run. Best effort where the caller says so:
the sweep's folder keeps everything these add (docs/report.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainers.logs import log


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # here: `frost status` and `frost --help` never import MLflow

    return MlflowClient(tracking_uri=tracking_uri)


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every child run of the sweep's parent run (mlflow.entities.Run), progress on stderr for long sweeps."""
    client = _client(tracking_uri)
    where = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=500, page_token=token)
        runs.extend(page)
        print(f"frost: report: {len(runs)} trial runs read from MLflow", file=sys.stderr, flush=True)
        token = page.token
        if not token:
            return runs


def metric_histories(
    tracking_uri: str, runs: Iterable[tuple[str, str]], metric: str
) -> dict[str, list[tuple]]:
    """key -> [(step, value)] of `metric` for each (key, run id) of `runs`."""
    client = _client(tracking_uri)
    history = {}
    for count, (key, run_id) in enumerate(runs, start=1):
        points = client.get_metric_history(run_id, metric)
        history[key] = sorted((p.step, p.value) for p in points)
        if count % 20 == 0:
            print(f"frost: report: {count} curves read", file=sys.stderr, flush=True)
    return history


def attach_to_parent(
    tracking_uri: str,
    parent_run_id: str | None,
    path: Path | None = None,
    metrics: dict[str, float] | None = None,
    folder: Path | None = None,
) -> bool:
    """Best effort: a file, a folder's files or metrics on the sweep's MLflow parent run (they stay beside the
    sweep anyway). False, with a warning, when MLflow could not take them."""
    if not parent_run_id:
        return False
    try:
        client = _client(tracking_uri)
        if path is not None:
            client.log_artifact(parent_run_id, str(path))
        if folder is not None:
            client.log_artifacts(parent_run_id, str(folder))
        for key, value in (metrics or {}).items():
            client.log_metric(parent_run_id, key, value)
        return True
    except Exception as exc:  # a tracking server that is down must not fail a finished sweep or its report
        log.warning(
            "tracking: could not update the sweep's run (%s); %s stays in the sweep's folder",
            type(exc).__name__,
            path or folder or metrics,
        )
        return False
