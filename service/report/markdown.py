"""report.md: the headline table (one row per capacity, the lead metrics), a table per capacity with every
metric side by side per freeze mode and the delta against fine-tuned with its 95% interval and verdict, the
capacity trends, the stopped / errored / unfinished trials, the finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.report.findings import BASELINE

if TYPE_CHECKING:
    from service.report.model import Report
    from service.report.rows import ReportRow


def _cell(report: Report, capacity: str, freeze: str, metric: str) -> str:
    group = next((g for g in report.groups if g.capacity == capacity and g.freeze == freeze), None)
    cell = group.stat(metric) if group else None
    if cell is None:
        return "–"
    digits = 1 if metric.endswith("_mb") or metric == "images_per_s" else 3
    return cell.text(digits)


def _delta(report: Report, capacity: str, freeze: str, metric: str, resolution: bool = False) -> str:
    """`+0.010 [-0.012, +0.032] (tie)`; with `resolution`, a tie adds what the sweep could resolve."""
    delta = next(
        (d for d in report.deltas if d.capacity == capacity and d.freeze == freeze and d.metric == metric),
        None,
    )
    if delta is None:
        return ""
    extra = delta.resolution() if resolution else ""
    return f"{delta.interval_text()} ({delta.verdict}{'; ' + extra if extra else ''})"


def _modes(report: Report) -> list[str]:
    modes = sorted({g.freeze for g in report.groups}, key=lambda f: (f == BASELINE, f))
    return modes


def _label(report: Report, capacity: str) -> str:
    group = next(g for g in report.groups if g.capacity == capacity)
    return f"`{capacity}` {group.label}"


def headline(report: Report) -> list[str]:
    modes = _modes(report)
    others = [m for m in modes if m != BASELINE]
    leads = report.leads
    columns = [f"{metric} {mode}" for metric in leads for mode in modes]
    columns += [f"Δ{metric} {mode}−{BASELINE}" for metric in leads for mode in others]
    lines = ["| capacity | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for capacity in report.capacities:
        cells = [_cell(report, capacity, mode, metric) for metric in leads for mode in modes]
        cells += [_delta(report, capacity, mode, metric) for metric in leads for mode in others]
        lines.append(f"| {_label(report, capacity)} | " + " | ".join(cells) + " |")
    return lines


def detail(report: Report, capacity: str) -> list[str]:
    from service.report.rows import TABLE_METRICS

    modes = _modes(report)
    others = [m for m in modes if m != BASELINE]
    header = ["metric", *modes, *(f"{m} − {BASELINE}" for m in others)]
    lines = [
        f"### {_label(report, capacity)}",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for metric in TABLE_METRICS:
        cells = [_cell(report, capacity, m, metric) for m in modes] + [
            _delta(report, capacity, m, metric, resolution=True) for m in others
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines + [""]


def trends(report: Report) -> list[str]:
    """The capacity trend of every (mode, metric): slope of Δ per capacity step with its 95% interval."""
    if not any(t.trend.cells > 1 for t in report.trends):
        return []
    lines = [
        "## Capacity trends",
        "",
        f"Δ (mode − {BASELINE}) against capacity rank (lightest 0), weighted least squares (weights 1/se²), "
        "95% interval of the slope; `grows`: the mode gains on fine-tuned as capacity rises.",
        "",
        "| mode | metric | lightest Δ | heaviest Δ | slope per step [95%] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in (t for t in report.trends if t.trend.cells > 1):
        r = t.trend
        slope = (
            f"{r.slope:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
            if r.slope is not None and r.ci_low is not None and r.ci_high is not None
            else "–"
        )
        lines.append(
            f"| {t.freeze} | {t.metric} | {r.from_delta:+.3f} | {r.to_delta:+.3f} | {slope} | {r.verdict} |"
        )
    return lines + [""]


def _why(row: ReportRow) -> str:
    if row.fate == "error":
        return row.error or "error"
    return f"{row.fate or 'running'}, epoch {row.epochs}"


def apart(report: Report) -> list[str]:
    lines = []
    if report.stopped:
        lines += [
            "## Stopped early (not averaged)",
            "",
            "| trial | capacity | freeze | seed | stopped at epoch | last AP | decision |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report.stopped:
            ap = f"{r.metrics['AP']:.3f}" if "AP" in r.metrics else "–"
            lines.append(
                f"| {r.trial_id} | `{r.capacity}` | {r.freeze} | {r.seed} | {r.epochs} of {r.planned_epochs} | {ap} | {r.decision or '–'} |"
            )
        lines.append("")
    listed = (("Errored", report.errored), ("Not finished", report.unfinished))
    for title, trials in listed:
        if trials:
            lines += [f"## {title}", ""]
            lines += [f"- {r.trial_id} (`{r.capacity}` {r.freeze}, seed {r.seed}): {_why(r)}" for r in trials]
            lines.append("")
    return lines


def markdown(report: Report, plots: list[str]) -> str:
    lines = [f"# Sweep `{report.sweep}`: frozen vs fine-tuned", ""]
    if report.running or report.unfinished:
        lines += [
            "**The sweep is still running (or was stopped): this report covers the trials that finished.**",
            "",
        ]
    lines += ["## Finding", "", report.finding, "", "## Table", ""]
    lines += [
        "Mean ± standard deviation over seeds (n) of the trials that ran to the end; Δ is the mode's mean minus "
        "fine-tuned's with its 95% interval (paired over seeds when both ran the same seeds, Welch's otherwise): "
        "`better` / `worse` when the interval excludes 0, `tie` when it covers it, `one seed` without one. "
        "A tie in the per-capacity tables adds the smallest difference the sweep resolves and the seeds that "
        "would resolve the observed one (docs/report.md).",
        "",
    ]
    lines += headline(report) + [""]
    for capacity in report.capacities:
        lines += detail(report, capacity)
    lines += trends(report)
    lines += apart(report)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)
