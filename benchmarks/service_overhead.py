"""Orchestration + tracking overhead: the same trial through `frost run` (Ray Tune + MLflow) and `frost train`;
then a sweep of several trials through `frost run` with Tune's actors reused (the default) and not.

Part 1 runs both in fresh processes on this machine, alternating over --repeats rounds; the table shows the
median wall time of each and their ratio. `frost run` includes starting the local Ray runtime and the SQLite
MLflow store. Part 2 runs a grid of --sweep-trials trials (over `optim.lr`), 2 at a time on 1 CPU each, with
`reuse_actors: true` and `false`, alternating: reused, a trial's process runs the next pending trial, so only
the first trial of each process imports torch and torchvision. The built-in data and weights come from the
project folder (made once beforehand, outside the timings).

    python benchmarks/service_overhead.py [--repeats 2] [--epochs 3] [--sweep-trials 4] [--no-sweeps]

The last `frost run` of part 1 is profiled (`--profile-startup`): its timeline is printed after the table.
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
    parser.add_argument("--sweep-trials", type=int, default=4)
    parser.add_argument("--no-sweeps", action="store_true", help="part 1 only")
    args = parser.parse_args()
    trial = {**LIGHT_TRIAL, "train": {**LIGHT_TRIAL["train"], "epochs": args.epochs}}
    walls: dict[str, list[float]] = {"frost train": [], "frost run": []}
    profiles: list[str] = []  # each `frost run`'s stderr, its --profile-startup timeline at the end
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
            _, wall = frost(["run", str(spec), "--json", "--profile-startup"], home, profiles)
            walls["frost run"].append(wall)
        lrs = [round(0.02 * 0.8**n, 6) for n in range(args.sweep_trials)]
        for round_ in range(0 if args.no_sweeps else args.repeats):
            for reuse in (True, False):
                name = f"reuse-{str(reuse).lower()}-{round_}"
                sweep = {"name": name, "trial": trial, "search": {"optim.lr": {"grid": lrs}},
                         "scheduler": {"type": "fifo"}, "resources": {"cpus": 1}, "max_concurrent_trials": 2,
                         "reuse_actors": reuse, **private_storage(Path(tmp))}  # fmt: skip
                print(f"round {round_ + 1}/{args.repeats}: frost run, {len(lrs)} trials, reuse_actors {reuse} ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                _, wall = frost(["run", str(write_spec(Path(tmp) / f"{name}.yaml", sweep)), "--json"], home)
                walls.setdefault(f"reuse_actors {str(reuse).lower()}", []).append(wall)
    bare, service = (statistics.median(walls[k]) for k in ("frost train", "frost run"))
    print(f"\nOne trial ({args.epochs} epochs, 96 train / 64 val images, 128 px), median of {args.repeats}")
    print(f"{'path':<14}{'wall s':>9}{'ratio':>8}")
    print(f"{'frost train':<14}{bare:>9.1f}{1.0:>8.2f}")
    print(f"{'frost run':<14}{service:>9.1f}{service / bare:>8.2f}")
    print(f"overhead: {service - bare:.1f} s per sweep (Ray start-up, Tune, MLflow tracking)")
    timeline = [line for line in profiles[-1].splitlines() if line.startswith("frost:   ")]
    print(
        "\nWhere the last `frost run` went (--profile-startup; s since the process started, + since the mark before)"
    )
    print("\n".join(line.removeprefix("frost: ") for line in timeline))
    if args.no_sweeps:
        return
    reused, fresh = (statistics.median(walls[f"reuse_actors {k}"]) for k in ("true", "false"))
    print(
        f"\nA sweep of {args.sweep_trials} such trials, 2 at a time on 1 CPU each, median of {args.repeats}"
    )
    print(f"{'reuse_actors':<14}{'wall s':>9}{'ratio':>8}")
    print(f"{'false':<14}{fresh:>9.1f}{1.0:>8.2f}")
    print(f"{'true':<14}{reused:>9.1f}{reused / fresh:>8.2f}")


if __name__ == "__main__":
    main()
