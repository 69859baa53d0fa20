"""Shared by the sweep benchmarks: write a spec, run `frost` in a subprocess, read its JSON last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# A light trial on the built-in data: half the default train split, 64 val images.
LIGHT_TRIAL: dict[str, Any] = {
    "data": {"limit_train": 96, "limit_val": 64},
    "train": {"epochs": 3, "device": "cpu"},
}


def frost(args: list[str], home: Path, stderr: list[str] | None = None) -> tuple[dict[str, Any], float]:
    """Run `frost ARGS` with FROST_HOME=home; returns (its JSON summary, wall seconds). `stderr`, when given,
    receives the command's stderr."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FROST_HOME": str(home)},
        check=False,
    )
    wall = time.perf_counter() - start
    if stderr is not None:
        stderr.append(done.stderr)
    if done.returncode != 0:
        sys.exit(f"frost {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def project_home() -> Path:
    """The project folder, for the built-in data and weights the benchmarks share with everything else."""
    return Path(os.environ.get("FROST_HOME", "frost-runs")).resolve()


def private_storage(tmp: Path) -> dict[str, Any]:
    """Sweep storage and MLflow store of a benchmark's own, so runs leave nothing in the project folder."""
    return {"storage": str(tmp / "sweeps"), "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"}}
