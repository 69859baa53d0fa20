"""`frost report NAME`: the sweep's answer to "frozen or fine-tuned, at which capacity, at what cost".

Reads the sweep's trials from MLflow and its folder (service/report_rows.py), groups the finished ones by
(capacity key, freeze mode), compares every mode with fine-tuned at each capacity (service/findings.py),
draws the plots (service/report_plots.py) and writes `report.md` + PNGs into the sweep's folder, logged to the
sweep's MLflow parent run. docs/report.md describes the layout and the rules.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.findings import BASELINE, Comparison, Delta, Stat, compare, finding, stat_of
from service.report_rows import AP_METRICS, METRICS, ReportRow, sweep_rows
from service.status import TRACKING_FILE
from sweeps.asha_state import STATE_FILE as ASHA_STATE_FILE
from sweeps.asha_state import read_decisions
from trainers.files import atomic_write_text, read_json_or

log = logging.getLogger("frost")
REPORT_FILE = "report.md"
DELTA_METRICS = AP_METRICS


@dataclass
class Group:
    """The finished trials of one (capacity, freeze mode): seeds of one configuration."""

    capacity: str
    freeze: str
    trials: list[ReportRow]

    @property
    def label(self) -> str:
        return self.trials[0].label

    def stat(self, metric: str) -> Stat | None:
        return stat_of([t.metrics[metric] for t in self.trials if metric in t.metrics])


@dataclass
class Report:
    sweep: str
    rows: list[ReportRow]
    groups: list[Group]
    deltas: list[Delta]
    comparisons: list[Comparison]
    capacities: list[str]  # in capacity order (head parameters, lightest first)
    running: bool

    @property
    def stopped(self) -> list[ReportRow]:
        return [r for r in self.rows if r.stopped]

    @property
    def errored(self) -> list[ReportRow]:
        return [r for r in self.rows if r.fate == "error"]

    @property
    def unfinished(self) -> list[ReportRow]:
        return [r for r in self.rows if r.fate in (None, "interrupted")]

    @property
    def finding(self) -> str:
        return finding(self.comparisons, stopped=len(self.stopped), running=len(self.unfinished))

    def to_json(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        for group in self.groups:
            row: dict[str, Any] = {"capacity": group.capacity, "label": group.label, "freeze": group.freeze}
            row["n"], row["stopped"] = len(group.trials), False
            for metric in METRICS:
                cell = group.stat(metric)
                row[metric] = cell.mean if cell else None
                row[f"{metric}_std"] = cell.std if cell else None
            row["seeds"] = [t.seed for t in group.trials]
            rows.append(row)
        for trial in self.stopped:  # one row each, never averaged
            row = {"capacity": trial.capacity, "label": trial.label, "freeze": trial.freeze, "n": 1}
            row.update(stopped=True, trial_id=trial.trial_id, epoch=trial.epochs, stop=trial.stop)
            row.update({metric: trial.metrics.get(metric) for metric in METRICS})
            rows.append(row)
        return {
            "sweep": self.sweep,
            "running": self.running,
            "rows": rows,
            "deltas": [d.to_json() for d in self.deltas],
            "errors": [
                {"trial_id": r.trial_id, "capacity": r.capacity, "freeze": r.freeze, "error": r.error}
                for r in self.errored
            ],
            "unfinished": [r.trial_id for r in self.unfinished],
            "finding": self.finding,
        }


def _pair(a: Group | None, b: Group | None, metric: str) -> tuple[Stat, Stat] | None:
    sa, sb = (a.stat(metric) if a else None), (b.stat(metric) if b else None)
    return (sa, sb) if sa and sb else None


def _capacity_order(groups: list[Group]) -> list[str]:
    """Capacities by trainable head parameters (fine-tuned's when present), lightest first."""
    size: dict[str, float] = {}
    for group in sorted(groups, key=lambda g: g.freeze == BASELINE):  # fine-tuned last: its value wins
        cell = group.stat("head_params")
        size[group.capacity] = cell.mean if cell else size.get(group.capacity, float("inf"))
    return sorted(size, key=lambda c: (size[c], c))


def build_report(sweep: str, rows: list[ReportRow], running: bool = False) -> Report:
    """Groups, deltas and comparisons from the rows (pure: the unit tests feed rows directly)."""
    by_key: dict[tuple[str, str], list[ReportRow]] = {}
    for row in rows:
        if row.finished:
            by_key.setdefault((row.capacity, row.freeze), []).append(row)
    groups = [Group(c, f, trials) for (c, f), trials in sorted(by_key.items())]
    capacities = _capacity_order(groups)
    index = {(g.capacity, g.freeze): g for g in groups}
    deltas, comparisons = [], []
    for capacity in capacities:
        base = index.get((capacity, BASELINE))
        for group in (g for g in groups if g.capacity == capacity and g.freeze != BASELINE):
            for metric in DELTA_METRICS:
                pair = _pair(group, base, metric)
                if pair:
                    deltas.append(compare(capacity, group.label, group.freeze, metric, *pair))
            ap = _pair(group, base, "AP")
            if ap is None:
                continue
            ap_r = _pair(group, base, "AP_r")
            comparisons.append(
                Comparison(
                    delta_ap=compare(capacity, group.label, group.freeze, "AP", *ap),
                    delta_ap_r=compare(capacity, group.label, group.freeze, "AP_r", *ap_r) if ap_r else None,
                    ap=ap,
                    ap_r=ap_r,
                    step_time=_pair(group, base, "step_time_s"),
                    memory=_pair(group, base, "peak_memory_mb"),
                    share=_pair(group, base, "trainable_share"),
                )
            )
    return Report(sweep, rows, groups, deltas, comparisons, capacities, running)


def sweep_report(directory: Path, stop_decisions: dict[str, dict[str, Any]] | None = None) -> Report:
    """The report of the sweep in `directory`. `stop_decisions`: trial_id -> the scheduler's decision
    (rung, cutoff, value; sweeps/asha.py read_decisions once merged), shown with the stopped trials."""
    if stop_decisions is None:  # the scheduler's own record of each stop (sweeps/asha.py)
        stop_decisions = {
            tid: dataclasses.asdict(d) for tid, d in read_decisions(directory / ASHA_STATE_FILE).items()
        }
    rows = sweep_rows(directory, stop_decisions)
    tracking = read_json_or(directory / TRACKING_FILE, {})
    running = isinstance(tracking, dict) and tracking.get("parent_status") == "RUNNING"
    return build_report(directory.name, rows, running=running)


def write_report(directory: Path, report: Report, tracking_uri: str | None = None) -> Path:
    """report.md and the PNGs in the sweep's folder; logged to the parent run (best effort)."""
    from service.report_markdown import markdown
    from service.report_plots import plot_report

    out = directory / "report"
    out.mkdir(exist_ok=True)
    history = {}
    if tracking_uri and any(r.run_id for r in report.rows):
        from service.report_rows import epoch_history

        try:
            history = epoch_history(tracking_uri, report.rows)
        except Exception as exc:  # MLflow down: the plot goes without curves
            log.warning("report: no per-epoch curves from MLflow (%s)", type(exc).__name__)
    plots = plot_report(report, history, out)
    path = out / REPORT_FILE
    atomic_write_text(path, markdown(report, [p.name for p in plots]))
    tracking = read_json_or(directory / TRACKING_FILE, {})
    parent = tracking.get("parent_run_id") if isinstance(tracking, dict) else None
    if tracking_uri and parent:
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=tracking_uri).log_artifacts(parent, str(out))
        except Exception as exc:  # the report stays in the sweep's folder either way
            log.warning(
                "report: not logged to the sweep's MLflow run (%s); it is at %s", type(exc).__name__, path
            )
    return path


def report_sweep(
    directory: Path, stop_decisions: dict[str, dict[str, Any]] | None = None
) -> tuple[Report, Path]:
    """Build and write the sweep's report (`frost report`, and the end of `frost run`)."""
    report = sweep_report(directory, stop_decisions)
    tracking = read_json_or(directory / TRACKING_FILE, {})
    uri = tracking.get("tracking_uri") if isinstance(tracking, dict) else None
    return report, write_report(directory, report, uri)


def report_command(name: str, root: str | None, form: str) -> int:
    """`frost report NAME`: md prints the finding then the path of report.md (last line); json one object."""
    import json

    from service.project import find_sweep, project_root

    report, path = report_sweep(find_sweep(name, project_root(root)))
    if form == "json":
        print(json.dumps(report.to_json()))
    else:
        print(report.finding)
        print(path)
    return 0
