"""What ASHA saves, and whether it still answers the question: one seeded grid under FIFO, plain ASHA and ASHA
stratified by freeze mode (one arm per rung metric), in one run.

Grid: freeze (frozen / finetune) x FPN width (the capacity knob, 3 levels by default) on the built-in long-tail
data, 2 trials at a time on 1 CPU each. Per arm: trial-epochs, wall time, best AP per freeze mode, and whether
the frozen-vs-fine-tuned verdict per capacity (which mode's best AP is higher) agrees with FIFO's. The target
(docs/scheduling.md): trial-epochs <= 0.5 of FIFO's with each mode's best AP >= 0.95 of FIFO's in that mode.

With `--seeds N` (N > 1) every cell runs seeds 0..N-1. The ASHA arms then let seeds compete as configurations
(`replicates_by: []`, frost's behaviour before issue 21), except `strat-replicates`: stratified by freeze mode
with `replicates_by: [seed]`, the seeds of a cell judged as one configuration and continuing or stopping
together (docs/scheduling.md).

    python benchmarks/asha_vs_fifo.py [--epochs 4] [--weights builtin|PATH] [--seeds 1]
        [--arms fifo,asha,strat-last,strat-replicates,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from _sweeps import LIGHT_TRIAL, frost, private_storage, project_home, write_spec

MODES = ("frozen", "finetune")
ARMS = ("fifo", "asha", "strat-last", "strat-best", "strat-ema", "strat-replicates")


def scheduler_for(arm: str, grace: int, reduction: float) -> dict[str, Any]:
    if arm == "fifo":
        return {"type": "fifo", "metric": "AP", "mode": "max"}
    asha = {
        "type": "asha",
        "metric": "AP",
        "mode": "max",
        "grace_period": grace,
        "reduction_factor": reduction,
    }
    if arm == "strat-replicates":
        return {**asha, "stratify_by": "backbone.freeze", "replicates_by": ["seed"]}
    asha[
        "replicates_by"
    ] = []  # seeds, when searched, compete as configurations: the arms this one is held against
    if arm == "asha":
        return asha
    return {**asha, "stratify_by": "backbone.freeze", "rung_metric": arm.removeprefix("strat-")}


def measure(arm: str, summary: dict[str, Any], wall: float) -> dict[str, Any]:
    """Trial-epochs, best AP per freeze mode, best AP per (capacity, mode) of one arm's sweep summary."""
    cells: dict[tuple[int, str], float] = {}
    for trial in summary["trials"]:
        key = (trial["config"]["neck.fpn_channels"], trial["config"]["backbone.freeze"])
        cells[key] = max(cells.get(key, 0.0), trial["AP"] or 0.0)
    return {
        "arm": arm,
        "trials": len(summary["trials"]),
        "epochs": sum(t["epochs"] for t in summary["trials"]),
        "wall": wall,
        "best": {mode: max(v for (_, m), v in cells.items() if m == mode) for mode in MODES},
        "cells": cells,
    }


def fifo_curves(sweep_dir: Path, seeds: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each FIFO trial's searched values and per-epoch history (AP, epoch_time_s), in Tune's trial order."""
    from service.sweep_folder import searched_values, trial_history

    searched = ["backbone.freeze", "neck.fpn_channels", *(["seed"] if seeds > 1 else [])]
    return [
        (searched_values(trial, searched), trial_history(trial))
        for trial in sorted((sweep_dir / "trials").iterdir())
    ]


def replay(arm: str, curves: list, grace: int, reduction: float, max_epochs: int) -> dict[str, Any]:
    """ASHA (frost's PersistentASHA itself) deciding on FIFO's recorded curves: 2 slots as in the real sweeps,
    trials started in Tune's order, each epoch's result arriving after its recorded epoch time. What a rung
    metric would have done, without running the grid again."""
    from ray.tune.experiment import Trial

    from sweeps.asha import PersistentASHA

    spec = scheduler_for(arm.removeprefix("replay-"), grace, reduction)
    scheduler = PersistentASHA(
        stratify_by=spec.get("stratify_by"), rung_metric=spec.get("rung_metric", "last"), time_attr="epoch",
        replicates_by=[p for p in spec.get("replicates_by", []) if p in curves[0][0]],
        metric="AP", mode="max", max_t=max_epochs, grace_period=grace, reduction_factor=reduction,
    )  # fmt: skip
    trials = [
        Trial("replay", config=config, trial_id=str(i), stub=True) for i, (config, _) in enumerate(curves)
    ]
    queue, events, ran = list(range(len(curves))), [], {}

    def start(i: int, at: float) -> None:
        events.append((at + curves[i][1][0]["epoch_time_s"], i, 0))

    for _ in range(2):  # max_concurrent_trials
        if queue:
            start(queue.pop(0), 0.0)
    while events:
        events.sort()
        at, i, k = events.pop(0)
        epoch, ran[i] = curves[i][1][k], k + 1
        action = scheduler.on_trial_result(None, trials[i], {"epoch": epoch["epoch"], "AP": epoch["AP"]})
        if action != "STOP" and k + 1 < len(curves[i][1]):
            events.append((at + curves[i][1][k + 1]["epoch_time_s"], i, k + 1))
        elif queue:
            start(queue.pop(0), at)
    summary = {"trials": [{"config": curves[i][0], "epochs": n,
                           "AP": max(e["AP"] for e in curves[i][1][:n])} for i, n in ran.items()]}  # fmt: skip
    return measure(arm, summary, float("nan"))


def verdicts(row: dict[str, Any]) -> dict[int, str]:
    """Per capacity: the freeze mode with the higher best AP (ties read as 'tie')."""
    out = {}
    for capacity in sorted({c for c, _ in row["cells"]}):
        frozen, finetune = row["cells"][(capacity, "frozen")], row["cells"][(capacity, "finetune")]
        out[capacity] = "tie" if frozen == finetune else ("frozen" if frozen > finetune else "finetune")
    return out


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    fifo = rows[0]
    print(f"\n{title}")
    print(
        f"{'arm':<25}{'trials':>7}{'trial-epochs':>14}{'ratio':>7}{'wall s':>8}"
        f"{'best AP frozen':>16}{'(xFIFO)':>8}{'best AP finetune':>18}{'(xFIFO)':>8}"
        f"{'verdicts = FIFO':>17}  target"
    )
    for row in rows:
        ratio = row["epochs"] / fifo["epochs"]
        keep = {m: row["best"][m] / fifo["best"][m] if fifo["best"][m] else float("nan") for m in MODES}
        agree = sum(verdicts(row)[c] == verdicts(fifo)[c] for c in verdicts(fifo))
        met = ratio <= 0.5 and all(keep[m] >= 0.95 for m in MODES)
        print(
            f"{row['arm']:<25}{row['trials']:>7}{row['epochs']:>14}{ratio:>7.2f}{row['wall']:>8.0f}"
            f"{row['best']['frozen']:>16.4f}{keep['frozen']:>8.2f}{row['best']['finetune']:>18.4f}"
            f"{keep['finetune']:>8.2f}{f'{agree}/{len(verdicts(fifo))}':>17}  "
            f"{'-' if row['arm'] == 'fifo' else ('met' if met else 'not met')}"
        )
    print("FIFO verdicts per FPN width: " + ", ".join(f"{c}: {v}" for c, v in verdicts(fifo).items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--capacities", default="32,64,128", help="FPN widths")
    parser.add_argument("--arms", default="fifo,asha,strat-last", help=f"run for real, of {', '.join(ARMS)}")
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--reduction", type=float, default=2)
    parser.add_argument(
        "--weights", default="builtin", help="backbone.weights: builtin, none or a checkpoint"
    )
    parser.add_argument("--train-images", type=int, default=LIGHT_TRIAL["data"]["limit_train"])
    parser.add_argument("--val-images", type=int, default=LIGHT_TRIAL["data"]["limit_val"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=8, help="optim.warmup_steps (toy runs are short)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (searched when > 1)")
    args = parser.parse_args()
    arms = args.arms.split(",")
    assert arms[0] == "fifo", "FIFO is the reference: list it first"
    capacities = [int(c) for c in args.capacities.split(",")]
    trial = {
        **LIGHT_TRIAL,
        "data": {"limit_train": args.train_images, "limit_val": args.val_images},
        "input": {"image_size": args.image_size},
        "backbone": {"weights": args.weights},
        "optim": {"warmup_steps": args.warmup_steps},
        "train": {**LIGHT_TRIAL["train"], "epochs": args.epochs},
        "seed": 0,
    }
    search: dict[str, Any] = {
        "backbone.freeze": {"grid": list(MODES)},
        "neck.fpn_channels": {"grid": capacities},
    }
    if args.seeds > 1:
        search["seed"] = {"grid": list(range(args.seeds))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = project_home()
        for arm in arms:
            sweep = {"name": f"grid-{arm}", "trial": trial, "search": search,
                     "scheduler": scheduler_for(arm, args.grace, args.reduction),
                     "resources": {"cpus": 1}, "max_concurrent_trials": 2, **private_storage(Path(tmp))}  # fmt: skip
            print(f"sweep with {arm} ...", file=sys.stderr, flush=True)
            summary, wall = frost(["run", str(write_spec(Path(tmp) / f"{arm}.yaml", sweep)), "--json"], home)
            rows.append(measure(arm, summary, wall))
            if arm == "fifo":
                curves = fifo_curves(Path(tmp) / "sweeps" / sweep["name"], args.seeds)
        replayed = [
            replay(f"replay-{arm}", curves, args.grace, args.reduction, args.epochs) for arm in ARMS[1:]
        ]
    print_table(
        rows,
        f"{2 * len(capacities) * args.seeds}-trial grid (freeze x FPN width {args.capacities} x {args.seeds} "
        f"seed(s)), {args.epochs} epochs max, "
        f"grace {args.grace}, reduction {args.reduction:g}, {args.train_images} train / {args.val_images} val "
        f"images, {args.image_size} px, weights {Path(args.weights).name}",
    )
    print_table(
        [rows[0], *replayed],
        "The same schedulers replayed on FIFO's recorded curves (no wall time: nothing ran again)",
    )


if __name__ == "__main__":
    main()
