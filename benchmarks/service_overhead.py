"""Orchestration + tracking overhead: the same trial through `frost run` (Ray Tune + MLflow) and `frost train`.

Both run in fresh processes on this machine, alternating over --repeats rounds; the table shows the median wall
time of each and their ratio. `frost run` includes starting the local Ray runtime and the SQLite MLflow store.
The built-in data and weights come from the project folder (made once beforehand, outside the timings).

    python benchmarks/service_overhead.py [--repeats 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _sweeps import LIGHT_TRIAL, frost, private_storage, project_home, write_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    trial = {**LIGHT_TRIAL, "train": {**LIGHT_TRIAL["train"], "epochs": args.epochs}}
    walls: dict[str, list[float]] = {"frost train": [], "frost run": []}
    with tempfile.TemporaryDirectory() as tmp:
        home = project_home()
        # Shared inputs first (the data set and the builtin classifier), outside the timings.
        frost(["train", "--out", str(Path(tmp) / "warm"), "--set", "train.epochs=1",
               "--set", "data.limit_train=8", "--set", "data.limit_val=8"], home)  # fmt: skip
        for round_ in range(args.repeats):
            trial_yaml = write_spec(Path(tmp) / f"trial-{round_}.yaml", trial)
            print(f"round {round_ + 1}/{args.repeats}: frost train ...", file=sys.stderr, flush=True)
            _, wall = frost(["train", str(trial_yaml), "--out", str(Path(tmp) / f"t{round_}")], home)
            walls["frost train"].append(wall)
            sweep = {"name": f"overhead-{round_}", "trial": trial, "scheduler": {"type": "fifo"},
                     "resources": {"cpus": 2}, **private_storage(Path(tmp))}  # fmt: skip
            spec = write_spec(Path(tmp) / f"sweep-{round_}.yaml", sweep)
            print(f"round {round_ + 1}/{args.repeats}: frost run ...", file=sys.stderr, flush=True)
            _, wall = frost(["run", str(spec), "--json"], home)
            walls["frost run"].append(wall)
    bare, service = (statistics.median(walls[k]) for k in ("frost train", "frost run"))
    print(f"\nOne trial ({args.epochs} epochs, 96 train / 64 val images, 128 px), median of {args.repeats}")
    print(f"{'path':<14}{'wall s':>9}{'ratio':>8}")
    print(f"{'frost train':<14}{bare:>9.1f}{1.0:>8.2f}")
    print(f"{'frost run':<14}{service:>9.1f}{service / bare:>8.2f}")
    print(f"overhead: {service - bare:.1f} s per sweep (Ray start-up, Tune, MLflow tracking)")


if __name__ == "__main__":
    main()
