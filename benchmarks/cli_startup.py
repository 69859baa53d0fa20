"""How fast do the light commands start? `frost --help`, `frost status`, `frost ls`, `frost validate`, timed
as whole processes (median of N runs), for this checkout and, optionally, another one side by side.

    python benchmarks/cli_startup.py [--other /path/to/older/checkout] [--runs 7]

Also checks the import graph: the status path must import neither Ray nor MLflow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


# Run from a neutral folder: with `python -c`, the current folder comes before PYTHONPATH on sys.path.
NEUTRAL = Path(tempfile.gettempdir())


def _time(checkout: Path, args: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    code = "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=NEUTRAL, capture_output=True, check=False
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _heavy_imports(checkout: Path, argv: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    code = f"from service.cli import main; main({argv!r})"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        cwd=NEUTRAL,
        capture_output=True,
        text=True,
    )
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted(n for n in names if n.split(".")[0] in ("ray", "mlflow", "torch", "torchvision"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, help="another checkout to time beside this one")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="frost-startup-"))
    sweep = root / "sweeps" / "demo"
    sweep.mkdir(parents=True)
    spec = (HERE / "sweeps" / "catalog" / "smoke.yaml").read_text().replace("name: smoke", "name: demo")
    (sweep / "frost-sweep.yaml").write_text(spec)
    commands = {
        "frost --help": ["--help"],
        "frost status demo": ["status", "demo", "--root", str(root)],
        "frost ls": ["ls", "--root", str(root)],
        "frost validate smoke.yaml": ["validate", str(HERE / "sweeps" / "catalog" / "smoke.yaml")],
    }
    checkouts = {"this": HERE, **({"other": args.other.resolve()} if args.other else {})}
    print(
        f"{'command':<28}"
        + "".join(f"{name:>10}" for name in checkouts)
        + ("     ratio" if args.other else "")
    )
    for label, argv in commands.items():
        seconds = {name: _time(path, argv, args.runs) for name, path in checkouts.items()}
        row = f"{label:<28}" + "".join(f"{seconds[name]:>9.2f}s" for name in checkouts)
        if args.other:
            row += f"{seconds['this'] / seconds['other']:>10.2f}"
        print(row)
    for name, path in checkouts.items():
        heavy = [h for h in _heavy_imports(path, commands["frost status demo"]) if "." not in h]
        print(f"{name}: `frost status` imports {', '.join(heavy) or 'no Ray, MLflow or torch'}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
