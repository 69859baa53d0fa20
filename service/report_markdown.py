"""report.md: the headline table (one row per capacity), a table per capacity with every metric side by side
per freeze mode and the delta against fine-tuned, the stopped / errored / unfinished trials, the finding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.findings import BASELINE

if TYPE_CHECKING:
    from service.report import Report
    from service.report_rows import ReportRow

HEADLINE = ("AP", "AP_r")


def _cell(report: Report, capacity: str, freeze: str, metric: str) -> str:
    group = next((g for g in report.groups if g.capacity == capacity and g.freeze == freeze), None)
    cell = group.stat(metric) if group else None
    if cell is None:
        return "–"
    digits = 1 if metric.endswith("_mb") or metric == "images_per_s" else 3
    return cell.text(digits)


def _delta(report: Report, capacity: str, freeze: str, metric: str) -> str:
    delta = next(
        (d for d in report.deltas if d.capacity == capacity and d.freeze == freeze and d.metric == metric),
        None,
    )
    return f"{delta.value:+.3f} ({delta.verdict})" if delta else ""


def _modes(report: Report) -> list[str]:
    modes = sorted({g.freeze for g in report.groups}, key=lambda f: (f == BASELINE, f))
    return modes


def _label(report: Report, capacity: str) -> str:
    group = next(g for g in report.groups if g.capacity == capacity)
    return f"`{capacity}` {group.label}"


def headline(report: Report) -> list[str]:
    modes = _modes(report)
    others = [m for m in modes if m != BASELINE]
    columns = [f"{metric} {mode}" for metric in HEADLINE for mode in modes]
    columns += [f"Δ{metric} {mode}−{BASELINE}" for metric in HEADLINE for mode in others]
    lines = ["| capacity | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for capacity in report.capacities:
        cells = [_cell(report, capacity, mode, metric) for metric in HEADLINE for mode in modes]
        cells += [_delta(report, capacity, mode, metric) for metric in HEADLINE for mode in others]
        lines.append(f"| {_label(report, capacity)} | " + " | ".join(cells) + " |")
    return lines


def detail(report: Report, capacity: str) -> list[str]:
    from service.report_rows import TABLE_METRICS

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
            _delta(report, capacity, m, metric) for m in others
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
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
                f"| {r.trial_id} | `{r.capacity}` | {r.freeze} | {r.seed} | {r.epochs} of {r.planned_epochs} | {ap} | {r.stop or ''} |"
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
        "Mean ± standard deviation over seeds (n) of the trials that ran to the end; Δ is the mode's mean minus fine-tuned's, judged against the seed spread.",
        "",
    ]
    lines += headline(report) + [""]
    for capacity in report.capacities:
        lines += detail(report, capacity)
    lines += apart(report)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)
