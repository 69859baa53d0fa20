"""The sweep as a picture: what a person would rather see than read in `frost status`.

Left: every trial's ranking metric per epoch, coloured by freeze mode (a line that stops early is a trial ASHA
stopped). Right: each trial's long-tail figures (AP_r / AP_c / AP_f) at its last evaluated epoch, trials
sorted by their best ranking metric — the paper's claim is that freezing helps the rare classes most.
Read from the sweep's own directory (trial specs and checkpoint histories), so it works for any sweep in
storage, finished or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.results import best_value, is_number
from service.sweep_folder import SweepFolder, Unreadable, searched_values, trial_history

PLOT_FILE = "sweep.png"
FREEZE_COLOURS = {"frozen": "#1f77b4", "finetune": "#ff7f0e", "partial": "#2ca02c"}
BUCKETS = ("AP_r", "AP_c", "AP_f")


def _freeze(trial_dir: Path) -> str:
    values = searched_values(trial_dir, ["backbone.freeze"])
    freeze = values.get("backbone.freeze")
    return "partial" if isinstance(freeze, dict) or str(freeze).startswith("partial") else str(freeze)


def _label(config: dict[str, Any]) -> str:
    return " · ".join(
        f"{path.split('.')[-1]}={value}" for path, value in config.items() if path != "backbone.freeze"
    )


def _curves(directory: Path, metric: str, mode: str, searched: list[str]) -> list[dict[str, Any]]:
    """Each trial that has evaluated an epoch: its metric per epoch, best value and last evaluated record."""
    trials: list[dict[str, Any]] = []
    for trial_dir in SweepFolder(directory).trial_dirs():
        try:
            history = trial_history(trial_dir)
        except Unreadable:
            continue
        evaluated = [h for h in history if is_number(h.get(metric))]
        if not evaluated:
            continue
        values = [h[metric] for h in evaluated]
        trials.append(
            {
                "id": trial_dir.name,
                "freeze": _freeze(trial_dir),
                "label": _label(searched_values(trial_dir, searched)),
                "epochs": [h["epoch"] for h in evaluated],
                "values": values,
                "best": best_value(values, mode),
                "last": evaluated[-1],
            }
        )
    trials.sort(key=lambda t: t["best"], reverse=mode == "max")
    return trials


def plot_sweep(directory: Path, metric: str, mode: str, searched: list[str]) -> Path | None:
    """Write `<directory>/sweep.png`; None when no trial has reported an epoch yet."""
    trials = _curves(directory, metric, mode, searched)
    if not trials:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (curves, tail) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    for trial in trials:
        colour = FREEZE_COLOURS.get(trial["freeze"], "#7f7f7f")
        curves.plot(trial["epochs"], trial["values"], marker="o", ms=3, color=colour, alpha=0.8)
    for freeze, colour in FREEZE_COLOURS.items():
        if any(t["freeze"] == freeze for t in trials):
            curves.plot([], [], color=colour, label=freeze)
    curves.set(
        xlabel="epoch", ylabel=metric, title=f"{directory.name}: {metric} per epoch ({len(trials)} trials)"
    )
    curves.legend(title="backbone", loc="best")
    curves.grid(alpha=0.3)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))

    _draw_long_tail(tail, trials, metric)
    fig.tight_layout()
    path = directory / PLOT_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_long_tail(tail: Any, trials: list[dict[str, Any]], metric: str) -> None:
    from matplotlib.patches import Patch

    width = 0.8 / len(BUCKETS)
    hatches = {"AP_r": "", "AP_c": "//", "AP_f": ".."}
    for i, trial in enumerate(trials):
        colour = FREEZE_COLOURS.get(trial["freeze"], "#7f7f7f")
        for j, bucket in enumerate(BUCKETS):
            value = trial["last"].get(bucket)
            if isinstance(value, (int, float)) and value >= 0:
                tail.bar(
                    i + (j - 1) * width, value, width, color=colour, hatch=hatches[bucket], edgecolor="white"
                )
    handles = [Patch(facecolor="#7f7f7f", hatch=hatches[b], edgecolor="white", label=b) for b in BUCKETS]
    tail.set_xticks(range(len(trials)))
    tail.set_xticklabels(
        [f"{t['freeze']}\n{t['label']}" for t in trials], rotation=30, ha="right", fontsize=7
    )
    tail.set(
        ylabel="AP at the last evaluated epoch",
        title=f"long tail: rare / common / frequent (by best {metric})",
    )
    tail.legend(handles=handles, loc="best")
    tail.grid(axis="y", alpha=0.3)
