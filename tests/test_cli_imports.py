"""The light commands stay light: `frost --help`, `frost ls` and `frost status` import no Ray, MLflow, torch,
matplotlib or scipy (benchmarks/cli_startup.py measures their start-up; this keeps an import from creeping in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.spec import dump_sweep_spec, load_sweep_spec

HEAVY = ("ray", "mlflow", "torch", "torchvision", "matplotlib", "scipy")
CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "catalog"
PROBE = """
import json, sys
from service.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def imports_of(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    sweep = root / "sweeps" / "smoke"
    sweep.mkdir(parents=True)
    dump_sweep_spec(load_sweep_spec(CATALOG / "smoke.yaml"), sweep / "frost-sweep.yaml")
    return root


@pytest.mark.parametrize("command", [["--help"], ["ls"], ["status", "smoke"], ["status", "smoke", "--json"]])
def test_light_commands_import_nothing_heavy(project, command):
    args = command if command == ["--help"] else [*command, "--root", str(project)]
    result = imports_of(*args)
    assert result["code"] == 0
    assert result["heavy"] == [], f"frost {' '.join(command)} imported {result['heavy']}"
