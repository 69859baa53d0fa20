"""What ASHA saves: the same small grid with ASHA and with FIFO, trial-epochs spent and best AP of each.

Grid: freeze (frozen / finetune) x FPN width (32 / 64) x box head FC width (64 / 256) = 8 trials of a light trial
on the built-in long-tail data, 2 at a time on 1 CPU each. Both sweeps run in this one invocation.

    python benchmarks/asha_vs_fifo.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _sweeps import LIGHT_TRIAL, frost, private_storage, project_home, write_spec

SEARCH = {
    "backbone.freeze": {"grid": ["frozen", "finetune"]},
    "neck.fpn_channels": {"grid": [32, 64]},
    "heads.box_fc": {"grid": [64, 256]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    trial = {**LIGHT_TRIAL, "train": {**LIGHT_TRIAL["train"], "epochs": args.epochs}}
    schedulers = {
        "fifo": {"type": "fifo", "metric": "AP", "mode": "max"},
        "asha": {"type": "asha", "metric": "AP", "mode": "max", "grace_period": 1, "reduction_factor": 2},
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = project_home()
        for name, scheduler in schedulers.items():
            sweep = {"name": f"grid-{name}", "trial": trial, "search": SEARCH, "scheduler": scheduler,
                     "resources": {"cpus": 1}, "max_concurrent_trials": 2, **private_storage(Path(tmp))}  # fmt: skip
            print(f"sweep with {name} ...", file=sys.stderr, flush=True)
            summary, wall = frost(["run", str(write_spec(Path(tmp) / f"{name}.yaml", sweep)), "--json"], home)
            epochs = sum(t["epochs"] for t in summary["trials"])
            rows[name] = (
                epochs,
                summary["best"]["AP"],
                summary["best"]["config"],
                wall,
                len(summary["trials"]),
            )
    fifo = rows["fifo"]
    print(f"\n8-trial grid, {args.epochs} epochs max, 96 train / 64 val images, 128 px")
    print(
        f"{'scheduler':<10}{'trials':>7}{'trial-epochs':>14}{'ratio':>7}{'best AP':>9}{'wall s':>8}  best config"
    )
    for name, (epochs, best, config, wall, trials) in rows.items():
        print(f"{name:<10}{trials:>7}{epochs:>14}{epochs / fifo[0]:>7.2f}{best:>9.4f}{wall:>8.0f}  {config}")


if __name__ == "__main__":
    main()
