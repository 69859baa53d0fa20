"""`frost submit / logs / stop / status --address` against a real Ray head (Jobs API, token auth on).

The head is started by deploy/local-cluster.sh on free loopback ports (never 6379) and stopped by the same
script with the same state directory: the test ends exactly what it started.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from helpers import free_port, tiny_sweep
from mlflow.tracking import MlflowClient

from service.cli import main
from service.cluster.jobs import auth_token, connect, wait_for_job
from service.cluster.reach import TOKEN_HELP, check_reachable
from service.tracking.uris import default_tracking_uri
from trainers.errors import FrostError

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local-cluster.sh"


def sweep_spec(name: str, epochs: int) -> dict:
    return tiny_sweep(name, lrs=[0.05, 0.04], epochs=epochs, concurrent=1, warmup_steps=0)


def frost(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def head_ports() -> list[int]:
    """The head's GCS, Jobs API and Ray client ports (free loopback ports, never 6379)."""
    ports = [free_port() for _ in range(3)]
    assert 6379 not in ports
    return ports


@pytest.fixture(scope="module")
def head(head_ports):
    """A Ray head (2 CPUs, no workers) on 127.0.0.1 with token auth; its Jobs API address."""
    # Short: Ray's Unix socket paths under the state dir must stay under 107 characters.
    state = tempfile.mkdtemp(prefix="frj-", dir="/tmp")
    ports = head_ports
    args = ["--port", str(ports[0]), "--dashboard-port", str(ports[1]), "--client-port", str(ports[2])]
    args += ["--state-dir", state]
    # The job's entrypoint runs `python`: the venv's, as a head on a real cluster would have.
    env = {**os.environ, "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", "--workers", "0", "--cpus", "2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield f"http://127.0.0.1:{ports[1]}"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", "--state-dir", state], env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_submit_is_idempotent_and_the_job_runs_the_sweep(head, tmp_path):
    spec = write_spec(tmp_path, sweep_spec("jobs-tiny", epochs=1))
    root = tmp_path / "root"
    code, out, err = frost("submit", str(spec), "--address", head, "--root", str(root), "--json")
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["name"] == "jobs-tiny" and first["address"] == head
    assert first["submission_id"].startswith("frost-jobs-tiny-")
    assert "browse:" in out

    code, out, err = frost("submit", str(spec), "--address", head, "--root", str(root), "--json")
    assert code == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["submission_id"] == first["submission_id"]
    assert "nothing submitted" in out
    jobs = [j for j in connect(head).list_jobs() if (j.metadata or {}).get("frost_sweep") == "jobs-tiny"]
    assert len(jobs) == 1
    # The code is shipped with the job (uploaded packages), not taken from whatever the head has installed.
    shipped = jobs[0].runtime_env
    assert len(shipped["py_modules"]) == 3 and all(m.startswith("gcs://") for m in shipped["py_modules"])
    assert shipped["working_dir"].startswith("gcs://")

    # --follow streams the driver's output while the sweep runs and returns once the job has ended.
    code, followed, err = frost("logs", "jobs-tiny", "--address", head, "--follow")
    assert code == 0 and "ended: SUCCEEDED" in err, err[-3000:]
    assert "frost: sweep 'jobs-tiny': 2 trials" in followed
    status = wait_for_job("jobs-tiny", head, ("SUCCEEDED", "FAILED", "STOPPED"), timeout=150)
    code, logs, _ = frost("logs", "jobs-tiny", "--address", head)
    assert status == "SUCCEEDED", logs[-3000:]
    assert code == 0
    summary = json.loads(logs.strip().splitlines()[-1])  # the driver's `frost run --json` line
    assert summary["name"] == "jobs-tiny" and len(summary["trials"]) == 2
    assert "frost: sweep 'jobs-tiny': 2 trials" in logs

    # A finished job is kept: submitting the same spec again does not start a driver.
    code, out, _ = frost("submit", str(spec), "--address", head, "--root", str(root))
    assert code == 0 and "SUCCEEDED" in out and "nothing submitted" in out
    code, out, err = frost("status", "jobs-tiny", "--root", str(root), "--address", head, "--json")
    assert code == 0, err
    state = json.loads(out)
    assert state["state"] == "COMPLETE" and len(state["trials"]) == 2
    assert state["job"]["status"] == "SUCCEEDED" and state["job"]["submission_id"] == first["submission_id"]


def test_stop_stops_a_running_sweep(head, tmp_path):
    spec = write_spec(tmp_path, sweep_spec("jobs-long", epochs=40))
    code, out, err = frost("submit", str(spec), "--address", head, "--root", str(tmp_path / "root"), "--json")
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert wait_for_job("jobs-long", head, ("RUNNING", "FAILED", "SUCCEEDED"), timeout=60) == "RUNNING"
    trials = tmp_path / "root" / "sweeps" / "jobs-long" / "trials"
    deadline = time.monotonic() + 180
    while not list(trials.glob("*/checkpoints/epoch-0001")):  # training, and tracked, before the stop
        assert time.monotonic() < deadline, frost("logs", "jobs-long", "--address", head)[1][-3000:]
        time.sleep(0.5)
    code, out, err = frost("stop", "jobs-long", "--address", head, "--json")
    assert code == 0, err
    assert json.loads(out)["stopped"] is True
    assert wait_for_job("jobs-long", head, ("STOPPED", "FAILED", "SUCCEEDED"), timeout=90) == "STOPPED"
    code, out, _ = frost("stop", "jobs-long", "--address", head)
    assert code == 0 and "not running" in out
    # The stop was graceful: the driver marked the sweep's runs interrupted, none is left RUNNING.
    code, logs, _ = frost("logs", "jobs-long", "--address", head)
    assert "SIGTERM: stopping the sweep" in logs, logs[-3000:]
    summary = json.loads(logs.strip().splitlines()[-1])  # the driver still prints its summary, saying so
    assert summary["interrupted"] is True and "INTERRUPTED" in {t["state"] for t in summary["trials"]}
    client = MlflowClient(default_tracking_uri(tmp_path / "root"))
    experiment = client.get_experiment_by_name("jobs-long")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]

    # A stopped sweep is submitted again under a new submission id (the driver resumes it from storage).
    code, out, err = frost("submit", str(spec), "--address", head, "--root", str(tmp_path / "root"), "--json")
    assert code == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["submission_id"] == f"{first['submission_id']}-r2"
    # A changed spec under the name of a running sweep is refused, not started beside it.
    code, _, err = frost("submit", str(spec), "--address", head, "--set", "trial.train.epochs=39")
    assert code == 2 and "different spec" in err
    code, out, err = frost("stop", "jobs-long", "--address", head, "--json")
    assert code == 0 and json.loads(out)["submission_id"] == again["submission_id"], err


def test_an_unreachable_head_is_a_user_error(tmp_path):
    spec = write_spec(tmp_path, sweep_spec("jobs-nowhere", epochs=1))
    code, _, err = frost("submit", str(spec), "--address", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach the Ray Jobs API" in err and "Traceback" not in err
    code, _, err = frost("logs", "jobs-nowhere", "--address", "127.0.0.1:8265")
    assert code == 2 and "http(s)://HEAD:PORT" in err


def test_a_wrong_token_is_refused_in_one_line(head, head_ports, monkeypatch):
    """Jobs API (frost logs) and GCS (what `frost run --address` joins) both name the refused token."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-cluster-token")
    started = time.monotonic()
    code, out, err = frost("logs", "jobs-tiny", "--address", head)
    assert time.monotonic() - started < 15
    assert code == 2 and out == "" and "Traceback" not in err
    assert err == f"frost: the Ray cluster at {head} refused the token (from {TOKEN_HELP})\n"
    gcs = f"127.0.0.1:{head_ports[0]}"
    started = time.monotonic()
    with pytest.raises(FrostError) as refused:
        check_reachable(gcs, timeout=10)
    assert time.monotonic() - started < 15
    assert (
        str(refused.value)
        == f"the Ray cluster at {gcs} refused the token (from {TOKEN_HELP}): missing or wrong"
    )
    # The cluster's own token passes both checks.
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    check_reachable(gcs, timeout=10)
    check_reachable(head, timeout=10, token=auth_token())
