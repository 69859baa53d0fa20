"""How soon does an interrupted sweep train again? SIGKILL the driver mid-sweep, then time `frost resume`.

Measures, for a 2-trial sweep of tiny trials killed once both trials checkpointed epoch 1: seconds from launching
`frost resume` to the first trial running again (the live view's first `running` line), to its first new epoch
report, and the resume in total; and per trial, the epoch it resumed from vs its newest checkpoint at the kill.

    python benchmarks/resume_latency.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trainers.checkpoints import read_attempts

SWEEP = {
    "name": "resume-latency",
    "trial": {
        "data": {
            "synth": {"train_images": 24, "val_images": 8, "image_size": 64, "classes": 4, "max_objects": 3}
        },
        "input": {"image_size": 64},
        "backbone": {"weights": "none"},
        "train": {"epochs": 4, "batch_size": 8, "device": "cpu"},
        "eval": {"rare_max": 4, "common_max": 12},
    },
    "search": {"optim.lr": {"grid": [0.02, 0.01]}},
    "scheduler": {"type": "fifo"},
    "resources": {"cpus": 1},
    "max_concurrent_trials": 2,
}


def frost(args: list[str], root: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args, "--root", str(root)],
        env={**os.environ, "FROST_HOME": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def newest(trials: Path) -> dict[str, int]:
    found = {}
    for trial in trials.glob("*"):
        epochs = [int(p.name.split("-")[1]) for p in trial.glob("checkpoints/epoch-[0-9]*[0-9]")]
        if epochs:
            found[trial.name] = max(epochs)
    return found


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, spec = Path(tmp) / "root", Path(tmp) / "sweep.yaml"
        spec.write_text(yaml.safe_dump(SWEEP))
        trials = root / "sweeps" / SWEEP["name"] / "trials"
        driver = frost(["run", str(spec)], root, start_new_session=True)
        while len(done := newest(trials)) < 2 or min(done.values()) < 1:
            if driver.poll() is not None:
                sys.exit(driver.stderr.read()[-3000:])
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        # A trial's worker notices its driver is gone a moment later, and may land the epoch it was in first.
        workers = [read_attempts(t)[-1]["pid"] for t in trials.iterdir() if read_attempts(t)]
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.1)
        at_kill = newest(trials)

        start = time.perf_counter()
        resumed = frost(["resume", SWEEP["name"]], root)
        first_running = first_report = None
        resumed_from: dict[str, int] = {}
        for line in resumed.stderr:
            now = time.perf_counter() - start
            if first_running is None and "] running" in line:
                first_running = now
            if first_report is None and re.search(r"\] running\s+epoch\s+[1-9]", line):
                first_report = now
            if match := re.search(r"resuming \S+/trials/(\S+) from epoch-(\d+)", line):
                resumed_from[match[1]] = int(match[2])
        resumed.wait()
        total = time.perf_counter() - start
    print("\nfrost resume after SIGKILL of the driver (2 trials x 4 epochs, killed after epoch 1)")
    print(f"to the first trial running again   {first_running:6.1f} s")
    print(f"to the first epoch reported again  {first_report:6.1f} s")
    print(f"resume in total                    {total:6.1f} s (exit {resumed.returncode})")
    for trial, epoch in sorted(at_kill.items()):
        resumed_after = resumed_from.get(trial, 0)
        print(
            f"trial {trial}: newest checkpoint once its worker was gone: epoch {epoch}; resumed after epoch "
            f"{resumed_after}; epochs re-run: {epoch + 1 - resumed_after} (the one in flight at the kill)"
        )


if __name__ == "__main__":
    main()
