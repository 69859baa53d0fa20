"""A sweep of scripted trials under PersistentASHA on a real Ray runtime, as a process of its own (a driver the
tests can SIGKILL). Each trial's AP per epoch is written down, not learned:

- frozen ("fast then flat"): 0.30, 0.32, 0.33, 0.33, plus 0.02 per capacity step;
- finetune ("slow then better"): 0.05, 0.15, 0.35, 0.45, plus 0.02 per capacity step.

FIFO's verdict is "finetune wins" at every capacity (0.45 + 0.02c > 0.33 + 0.02c). The grid runs one trial at a
time, strongest capacity first in each mode and the frozen mode first (it is the faster one in a real sweep),
so every decision is a hand-derivable function of the order.

    python scripted_asha.py run STORAGE NAME [--stratify] [--rung-metric last] [--epoch-s 0.2] [--seeds N]
    python scripted_asha.py restore STORAGE NAME [--stratify] ...

With `--seeds N` every arm runs N seeds in a row (seed s adds 0.001 * s to the AP), and the seeds are
replicates of their arm (`replicates_by: arm.seed`): ASHA judges arms, not trials.

The last stdout line is JSON: {"trials": {trial_id: {"freeze", "capacity", "epochs"}},
"decisions": {trial_id: Decision fields}, "state": path of the scheduler's state}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: every socket on loopback

import ray  # noqa: E402
from ray import tune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sweeps.asha import PersistentASHA  # noqa: E402
from sweeps.asha_state import read_decisions  # noqa: E402

CURVES = {"frozen": [0.30, 0.32, 0.33, 0.33], "finetune": [0.05, 0.15, 0.35, 0.45]}
CAPACITY_STEP = 0.02
SEED_STEP = 0.001
MAX_EPOCHS = 4
ARMS = [{"freeze": f, "capacity": c} for f in ("frozen", "finetune") for c in (2, 1, 0)]


def arms(seeds: int) -> list[dict]:
    if not seeds:
        return ARMS
    return [{**arm, "seed": seed} for arm in ARMS for seed in range(seeds)]


def scripted_ap(freeze: str, capacity: int, epoch: int, seed: int = 0) -> float:
    return round(CURVES[freeze][epoch - 1] + CAPACITY_STEP * capacity + SEED_STEP * seed, 6)


def scripted_trial(config: dict) -> None:
    """Reports the scripted AP every epoch with a checkpoint holding the epoch; resumes after it."""
    arm, start = config["arm"], 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "epoch.json").read_text())["epoch"] + 1
    for epoch in range(start, MAX_EPOCHS + 1):
        time.sleep(config["epoch_s"])
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(
                {
                    "epoch": epoch,
                    "AP": scripted_ap(arm["freeze"], arm["capacity"], epoch, arm.get("seed", 0)),
                },
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def scheduler(state: Path, stratify: bool, rung_metric: str, seeds: int = 0) -> PersistentASHA:
    return PersistentASHA(
        state,
        stratify_by="arm.freeze" if stratify else None,
        replicates_by=["arm.seed"] if seeds else [],
        rung_metric=rung_metric,
        time_attr="epoch",
        metric="AP",
        mode="max",
        max_t=MAX_EPOCHS,
        grace_period=1,
        reduction_factor=2,
    )


def outcome(results: tune.ResultGrid, state: Path) -> dict:
    trials = {}
    for result in results:
        trial_id = result.metrics["trial_id"]
        trials[trial_id] = {**result.config["arm"], "epochs": result.metrics["epoch"]}
    decisions = {t: dataclasses.asdict(d) for t, d in read_decisions(state).items()}
    return {"trials": trials, "decisions": decisions, "state": str(state)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["run", "restore"])
    parser.add_argument("storage")
    parser.add_argument("name")
    parser.add_argument("--stratify", action="store_true")
    parser.add_argument("--rung-metric", default="last")
    parser.add_argument("--epoch-s", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=0, help="replicates per arm (0: no seed in the config)")
    args = parser.parse_args()
    storage = Path(args.storage).resolve()
    state = storage / f"{args.name}-asha-state.json"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    if args.action == "restore":
        tuner = tune.Tuner.restore(str(storage / args.name), trainable=scripted_trial, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            scripted_trial,
            param_space={"arm": tune.grid_search(arms(args.seeds)), "epoch_s": args.epoch_s},
            tune_config=tune.TuneConfig(
                scheduler=scheduler(state, args.stratify, args.rung_metric, args.seeds),
                max_concurrent_trials=1,
            ),
            run_config=tune.RunConfig(name=args.name, storage_path=str(storage), verbose=0),
        )
    print(json.dumps(outcome(tuner.fit(), state)), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
