"""`frost report NAME`: the sweep's answer to "frozen or fine-tuned, at which capacity, at what cost".

Reads the sweep's trials from MLflow and its folder (service/report_rows.py), groups the finished ones by
(capacity key, freeze mode), compares every mode with fine-tuned at each capacity (service/findings.py),
draws the plots (service/report_plots.py) and writes `report.md` + PNGs into the sweep's folder, logged to the
sweep's MLflow parent run. docs/report.md describes the layout and the rules.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.findings import (
    BASELINE,
    CapacityTrend,
    Comparison,
    Delta,
    Stat,
    capacity_trends,
    compare,
    finding,
    lead_metrics,
    stat_of,
)
from service.report_rows import AP_METRICS, METRICS, ReportRow, sweep_rows
from service.status import TRACKING_FILE
from sweeps.asha_state import STATE_FILE as ASHA_STATE_FILE
from sweeps.asha_state import Decision, read_decisions
from trainers.files import atomic_write_text, read_json_or

log = logging.getLogger("frost")
REPORT_FILE = "report.md"
DELTA_METRICS = AP_METRICS
FROZEN = "frozen"  # the mode whose trainable share is the capacity axis (Vasconcelos et al.)


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

    def by_seed(self, metric: str) -> dict[str, float]:
        """seed -> value; a seed run twice keeps both values under distinct keys (then nothing pairs)."""
        values: dict[str, float] = {}
        for t in self.trials:
            if metric in t.metrics:
                key = t.seed if t.seed not in values else f"{t.seed}#{t.trial_id}"
                values[key] = t.metrics[metric]
        return values


@dataclass
class Report:
    sweep: str
    rows: list[ReportRow]
    groups: list[Group]
    deltas: list[Delta]
    comparisons: list[Comparison]
    capacities: list[str]  # in capacity order (frozen trainable share, then head parameters; lightest first)
    running: bool
    leads: tuple[str, ...] = ("AP", "AP_r")  # the sweep's metric and AP_r (service/findings.py lead_metrics)
    trends: list[CapacityTrend] = dataclasses.field(default_factory=list)

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
        return finding(
            self.comparisons,
            stopped=len(self.stopped),
            running=len(self.unfinished),
            leads=self.leads,
            trends=self.trends,
            deltas=self.deltas,
        )

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
            row["decision"] = trial.decision or _stopped_without_decision(trial)
            row.update({metric: trial.metrics.get(metric) for metric in METRICS})
            rows.append(row)
        return {
            "sweep": self.sweep,
            "running": self.running,
            "rows": rows,
            "deltas": [d.to_json() for d in self.deltas],
            "trends": [t.to_json() for t in self.trends],
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
    """Capacities lightest first by the frozen model's trainable share (the x-axis of Vasconcelos et al.;
    another non-fine-tuned mode's lowest share when a capacity has no frozen trials), then by head
    parameters where shares tie. Fine-tuned's share is 1 at every capacity: it orders nothing."""

    def key(capacity: str) -> tuple[float, float, str]:
        mine = [g for g in groups if g.capacity == capacity]
        frozen = [g for g in mine if g.freeze == FROZEN] or [g for g in mine if g.freeze != BASELINE]
        shares = [s.mean for g in frozen if (s := g.stat("trainable_share"))]
        heads = [h.mean for g in (frozen or mine) if (h := g.stat("head_params"))]
        return (min(shares, default=math.inf), min(heads, default=math.inf), capacity)

    return sorted({g.capacity for g in groups}, key=key)


def build_report(
    sweep: str, rows: list[ReportRow], running: bool = False, sweep_metric: str = "AP"
) -> Report:
    """Groups, deltas, comparisons and trends from the rows (pure: the unit tests feed rows directly).
    `sweep_metric`: the scheduler's metric of the sweep's spec, the finding's lead with AP_r."""
    by_key: dict[tuple[str, str], list[ReportRow]] = {}
    for row in rows:
        if row.finished:
            by_key.setdefault((row.capacity, row.freeze), []).append(row)
    groups = [Group(c, f, trials) for (c, f), trials in sorted(by_key.items())]
    capacities = _capacity_order(groups)
    index = {(g.capacity, g.freeze): g for g in groups}
    deltas: list[Delta] = []
    comparisons: list[Comparison] = []
    for capacity in capacities:
        base = index.get((capacity, BASELINE))
        if base is None:
            continue
        for group in (g for g in groups if g.capacity == capacity and g.freeze != BASELINE):
            mine: dict[str, Delta] = {}
            stats: dict[str, tuple[Stat, Stat]] = {}
            for metric in DELTA_METRICS:
                pair = _pair(group, base, metric)
                if pair:
                    stats[metric] = pair
                    mine[metric] = compare(
                        capacity,
                        group.label,
                        group.freeze,
                        metric,
                        group.by_seed(metric),
                        base.by_seed(metric),
                    )
            deltas.extend(mine.values())
            if mine:
                comparisons.append(
                    Comparison(
                        capacity,
                        group.label,
                        group.freeze,
                        mine,
                        stats,
                        step_time=_pair(group, base, "step_time_s"),
                        memory=_pair(group, base, "peak_memory_mb"),
                        share=_pair(group, base, "trainable_share"),
                    )
                )
    trends = capacity_trends(deltas, capacities)
    leads = lead_metrics(sweep_metric)
    return Report(sweep, rows, groups, deltas, comparisons, capacities, running, leads, trends)


def _stopped_without_decision(row: ReportRow) -> str:
    return f"stopped at epoch {row.epochs} of {row.planned_epochs or '?'} (no scheduler decision recorded)"


def stop_sentence(stop: dict[str, Any]) -> str:
    """A decision handed in as a dict (`stop_decisions`), in words: the scheduler's own sentence when the
    dict is a Decision's fields, else its items named."""
    try:
        return Decision(**stop).describe()
    except TypeError:
        return "stopped by the scheduler: " + ", ".join(f"{k} {v}" for k, v in stop.items())


def sweep_metric_of(directory: Path) -> str:
    """The scheduler metric of the sweep's saved spec (AP, the spec's default, when it cannot be read)."""
    from service.project import SPEC_FILE
    from sweeps.spec import load_sweep_spec
    from trainers.errors import FrostError

    try:
        return load_sweep_spec(directory / SPEC_FILE).scheduler.metric
    except FrostError as exc:
        log.warning("report: the sweep's spec is unreadable (%s); AP leads the finding", exc)
        return "AP"


def sweep_report(directory: Path, stop_decisions: dict[str, dict[str, Any]] | None = None) -> Report:
    """The report of the sweep in `directory`. `stop_decisions`: trial_id -> the scheduler's decision
    (rung, cutoff, value; sweeps/asha.py read_decisions once merged), shown with the stopped trials."""
    sentences: dict[str, str] = {}
    if stop_decisions is None:  # the scheduler's own record of each stop (sweeps/asha.py)
        decisions = read_decisions(directory / ASHA_STATE_FILE)
        stop_decisions = {tid: dataclasses.asdict(d) for tid, d in decisions.items()}
        sentences = {tid: d.describe() for tid, d in decisions.items()}
    rows = sweep_rows(directory, stop_decisions)
    for row in rows:
        if row.stop is not None:
            row.decision = sentences.get(row.trial_id) or stop_sentence(row.stop)
    tracking = read_json_or(directory / TRACKING_FILE, {})
    running = isinstance(tracking, dict) and tracking.get("parent_status") == "RUNNING"
    return build_report(directory.name, rows, running=running, sweep_metric=sweep_metric_of(directory))


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
