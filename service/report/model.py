"""The report's model, pure: rows in, groups by (capacity, freeze mode), deltas against fine-tuned with their
intervals, capacity trends and the finding out (service/report/findings.py, stats.py). The unit tests feed it
rows by hand; service/report/write.py feeds it a sweep's. docs/report.md describes the rules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from service.report.findings import (
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
from service.report.rows import AP_METRICS, METRICS, ReportRow

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
    leads: tuple[str, ...] = (
        "AP",
        "AP_r",
    )  # the sweep's metric and AP_r (service/report/findings.py lead_metrics)
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
