"""Two runs of one grid, side by side: what early stopping cost in work and whether it changed the answer.

Reads each sweep's folder and MLflow runs as `frost report` does (service/report/) and prints, per sweep, the
trials, their trial-epochs (epochs trained, summed) and the ratio to the first sweep's; then every verdict the
reports make — each (capacity, mode) − fine-tuned difference on the lead metrics (AP and AP_r by default:
better / worse / tie / one seed, from its 95% interval) and each capacity trend (grows / shrinks / flat /
unjudged) — and whether the second sweep's verdict agrees with the first's. Stopped trials are never in a
cell, so a configuration ASHA stopped leaves its cell empty in the second report ("–").

    python benchmarks/compare_sweeps.py REFERENCE_SWEEP_DIR OTHER_SWEEP_DIR [--metrics AP,AP_r] [--json]

e.g. the toy replication under FIFO and under replicate-aware stratified ASHA (docs/replication.md):
    python benchmarks/compare_sweeps.py frost-runs/sweeps/replication frost-runs/sweeps/replication_asha
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.report.model import Report
from service.report.write import sweep_report
from service.status import sweep_status
from service.sweep_folder import SweepFolder


def trial_epochs(directory: Path) -> tuple[int, int, int]:
    """(trials, trial-epochs, trials stopped early) of a sweep, from its folder."""
    status = sweep_status(directory)
    stopped = sum(1 for t in status.trials if t.fate == "stopped")
    return len(status.trials), sum(t.epochs for t in status.trials), stopped


def verdicts(report: Report, metrics: list[str]) -> dict[str, str]:
    """Every verdict the report makes on `metrics`: deltas by (capacity label, mode, metric), then trends."""
    found = {
        f"{d.label or d.capacity} | {d.freeze} - finetune | {d.metric}": d.verdict
        for d in report.deltas
        if d.metric in metrics
    }
    for trend in report.trends:
        if trend.metric in metrics:
            found[f"trend | {trend.freeze} - finetune | {trend.metric}"] = trend.trend.verdict
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--metrics", default="AP,AP_r")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    reports = [sweep_report(SweepFolder(d)) for d in (args.reference, args.other)]
    work = [trial_epochs(d) for d in (args.reference, args.other)]
    print(f"{'sweep':<28}{'trials':>8}{'stopped':>9}{'trial-epochs':>14}{'ratio':>8}")
    for directory, (trials, epochs, stopped) in zip((args.reference, args.other), work):
        print(f"{directory.name:<28}{trials:>8}{stopped:>9}{epochs:>14}{epochs / work[0][1]:>8.2f}")
    first, second = (verdicts(r, metrics) for r in reports)
    agree = sum(first[k] == second.get(k) for k in first)
    print(f"\n{'verdict':<78}{args.reference.name:>14}{args.other.name:>18}")
    for key, verdict in first.items():
        mark = "" if second.get(key) == verdict else "  <- differs"
        print(f"{key:<78}{verdict:>14}{second.get(key, '–'):>18}{mark}")
    print(f"\nverdicts that agree: {agree} of {len(first)}")
    if args.json:
        result: dict[str, Any] = {
            "trial_epochs": [w[1] for w in work],
            "ratio": work[1][1] / work[0][1],
            "stopped": [w[2] for w in work],
            "agree": agree,
            "verdicts": len(first),
            "differ": [k for k in first if first[k] != second.get(k)],
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
