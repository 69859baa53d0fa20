"""The report's pictures (matplotlib, Agg), written beside report.md:

- `ap_vs_share.png`: AP and AP_r against the trainable share, one line per freeze mode through the capacity
  means, every finished seed a point: the figure of Vasconcelos et al. (CVPR 2022);
- `ap_per_epoch.png`: AP per epoch per trial coloured by freeze mode, a cross where a trial was stopped early;
- `resources.png`: step time and peak memory per capacity and freeze mode;
- `delta_vs_capacity.png`: Δ (mode − fine-tuned) of the lead metrics against capacity (lightest first), the
  95% intervals as error bars (none below 2 seeds: a hollow marker), y = 0 marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.plots import FREEZE_COLOURS

if TYPE_CHECKING:
    from service.report.model import Report


def _colour(freeze: str) -> str:
    return FREEZE_COLOURS.get(freeze.split(":")[0], "#7f7f7f")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def ap_vs_share(report: Report, path: Path) -> Path | None:
    plt = pyplot()
    if not report.groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    for axis, metric in zip(axes, ("AP", "AP_r")):
        for freeze in sorted({g.freeze for g in report.groups}):
            groups = [g for g in report.groups if g.freeze == freeze]
            points = [
                (t.metrics["trainable_share"], t.metrics[metric])
                for g in groups
                for t in g.trials
                if "trainable_share" in t.metrics and metric in t.metrics
            ]
            if points:
                axis.scatter(*zip(*points), color=_colour(freeze), alpha=0.5, s=14)
            means = sorted(
                (s.mean, m.mean) for g in groups if (s := g.stat("trainable_share")) and (m := g.stat(metric))
            )
            if means:
                axis.plot(*zip(*means), color=_colour(freeze), marker="o", label=freeze)
        axis.set(xlabel="trainable share of parameters", ylabel=metric, title=f"{metric} vs trainable share")
        if axis.get_legend_handles_labels()[0]:  # no legend, no matplotlib warning
            axis.legend(fontsize=7)
    return save_figure(fig, path)


def ap_per_epoch(report: Report, history: dict[str, list[tuple]], path: Path) -> Path | None:
    plt = pyplot()
    if not history:
        return None
    fig, axis = plt.subplots(figsize=(6, 3.2), dpi=90)
    seen: set[str] = set()
    for row in report.rows:
        points = history.get(row.trial_id)
        if not points:
            continue
        label = row.freeze if row.freeze not in seen else None
        seen.add(row.freeze)
        axis.plot(*zip(*points), color=_colour(row.freeze), alpha=0.7, label=label)
        if row.stopped:
            axis.scatter([points[-1][0]], [points[-1][1]], marker="x", color="black", zorder=3)
    axis.set(xlabel="epoch", ylabel="AP", title="AP per epoch (x: stopped early)")
    if axis.get_legend_handles_labels()[0]:  # no legend, no matplotlib warning
        axis.legend(fontsize=7)
    return save_figure(fig, path)


def resources(report: Report, path: Path) -> Path | None:
    plt = pyplot()
    if not report.groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    modes = sorted({g.freeze for g in report.groups})
    width = 0.8 / len(modes)
    for axis, metric in zip(axes, ("step_time_s", "peak_memory_mb")):
        for offset, freeze in enumerate(modes):
            xs, ys, errs = [], [], []
            for position, capacity in enumerate(report.capacities):
                group = next(
                    (g for g in report.groups if g.capacity == capacity and g.freeze == freeze), None
                )
                cell = group.stat(metric) if group else None
                if cell:
                    xs.append(position + offset * width)
                    ys.append(cell.mean)
                    errs.append(cell.std or 0.0)
            axis.bar(xs, ys, width, yerr=errs, color=_colour(freeze), label=freeze)
        axis.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(report.capacities))],
            [c[:6] for c in report.capacities],
            fontsize=7,
        )
        axis.set(xlabel="capacity (lightest first)", ylabel=metric, title=metric)
        if axis.get_legend_handles_labels()[0]:  # no legend, no matplotlib warning
            axis.legend(fontsize=7)
    return save_figure(fig, path)


def _tick(report: Report, capacity: str) -> str:
    """The capacity's key and its frozen share (the order of the axis)."""
    frozen = next((g for g in report.groups if g.capacity == capacity and g.freeze == "frozen"), None)
    share = frozen.stat("trainable_share") if frozen else None
    return f"{capacity[:6]}\n{share.mean:.0%}" if share else capacity[:6]


def delta_vs_capacity(report: Report, path: Path) -> Path | None:
    plt = pyplot()
    if not report.deltas:
        return None
    leads = report.leads
    fig, axes = plt.subplots(1, len(leads), figsize=(4 * len(leads), 3.2), dpi=90, squeeze=False)
    position = {c: i for i, c in enumerate(report.capacities)}
    modes = sorted({d.freeze for d in report.deltas})
    for axis, metric in zip(axes[0], leads):
        axis.axhline(0.0, color="black", linewidth=0.8)
        for offset, freeze in enumerate(modes):
            deltas = sorted(
                (d for d in report.deltas if d.freeze == freeze and d.metric == metric),
                key=lambda d: position[d.capacity],
            )
            if not deltas:
                continue
            # Modes side by side around each capacity so their bars do not hide one another.
            xs = [position[d.capacity] + (offset - (len(modes) - 1) / 2) * 0.08 for d in deltas]
            ys = [d.value for d in deltas]
            low = [d.value - d.diff.ci_low if d.diff.ci_low is not None else 0.0 for d in deltas]
            high = [d.diff.ci_high - d.value if d.diff.ci_high is not None else 0.0 for d in deltas]
            colour = _colour(freeze)
            axis.errorbar(xs, ys, yerr=[low, high], color=colour, marker="o", capsize=3, label=freeze)
            lone = [(x, y) for x, y, d in zip(xs, ys, deltas) if d.diff.ci_low is None]
            if lone:
                axis.scatter(*zip(*lone), facecolors="white", edgecolors=colour, zorder=3)
        axis.set_xticks(
            range(len(report.capacities)), [_tick(report, c) for c in report.capacities], fontsize=7
        )
        axis.set(
            xlabel="capacity (frozen trainable share, lightest first)",
            ylabel=f"Δ{metric} (mode − fine-tuned)",
            title=f"Δ{metric} with 95% intervals",
        )
        if axis.get_legend_handles_labels()[0]:  # no legend, no matplotlib warning
            axis.legend(fontsize=7)
    return save_figure(fig, path)


def plot_report(report: Report, history: dict[str, list[tuple]], out: Path) -> list[Path]:
    made = [
        ap_vs_share(report, out / "ap_vs_share.png"),
        ap_per_epoch(report, history, out / "ap_per_epoch.png"),
        resources(report, out / "resources.png"),
        delta_vs_capacity(report, out / "delta_vs_capacity.png"),
    ]
    return [p for p in made if p is not None]
