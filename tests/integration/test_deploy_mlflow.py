"""deploy/'s MLflow settings, run for real on loopback: mlflow-server.sh with its PostgreSQL URI from a 0600
file (never in a process's arguments), and `mlflow server` with the arguments of deploy/kuberay/mlflow.yaml
(basic auth, exact --allowed-hosts). Every server here is started by the test and stopped by its own pid."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ADMIN = ("frost-admin", "admin-" + "a1" * 10)
SWEEPS = ("frost-sweeps", "sweeps-" + "b2" * 10)


def http_status(url: str, host: str | None = None, user: tuple[str, str] | None = None) -> int:
    headers = {"Host": host} if host else {}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_healthy(base: str, alive, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while http_status_or_none(f"{base}/health") != 200:
        assert alive(), "the MLflow server exited during start-up"
        assert time.monotonic() < deadline, f"{base} not healthy after {timeout} s"
        time.sleep(0.5)


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url)
    except OSError:
        return None


def process_arguments(session: int) -> list[str]:
    """The command lines of every process of a session (the server and its workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == session:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return found


def test_mlflow_script_reads_the_postgresql_uri_from_a_private_file(postgres_database, tmp_path, monkeypatch):
    uri_file = tmp_path / "mlflow-db-uri"
    uri_file.write_text(postgres_database + "\n")
    uri_file.chmod(0o600)
    # The script's server requires a user: its admin, from a 0600 credentials file.
    credentials = tmp_path / "mlflow-credentials"
    credentials.write_text(
        f"[mlflow]\nmlflow_tracking_username = {ADMIN[0]}\nmlflow_tracking_password = {ADMIN[1]}\n"
    )
    credentials.chmod(0o600)
    port = str(free_port())
    common = ["--root", str(tmp_path / "root"), "--port", port]
    env = {**os.environ, "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    start = [*common, "--backend-store-uri-file", str(uri_file), "--credentials-file", str(credentials)]
    script = ["bash", str(DEPLOY / "mlflow-server.sh")]
    started = subprocess.run([*script, "start", *start], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert "store: postgresql+psycopg2," in started.stdout and postgres_database not in started.stdout
        pid = int((tmp_path / "root" / f"mlflow-server-{port}.pid").read_text())
        arguments = process_arguments(pid)
        assert any("mlflow server --host 127.0.0.1" in a for a in arguments), arguments
        database = postgres_database.rsplit("/", 1)[1]
        assert not any(database in a for a in arguments), "the store URI is in a command line"
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.create_experiment("deploy-pg")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "ap", 0.25)
        client.set_terminated(run.info.run_id)
    finally:
        stopped = subprocess.run(
            [*script, "stop", *common], env=env, capture_output=True, text=True, timeout=60
        )
    assert stopped.returncode == 0 and "stopped the MLflow server" in stdout_of(stopped)
    # The run is in PostgreSQL: the same store, read without the server.
    [stored] = MlflowClient(postgres_database).search_runs([experiment])
    assert stored.data.metrics == {"ap": 0.25}


def stdout_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def manifest_server(tmp_path) -> Iterator[str]:
    """`mlflow server` with mlflow.yaml's arguments, on 127.0.0.1 and local files instead of the cluster's."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (the image has it)")
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "mlflow.yaml").read_text()) if d)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    port = free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--workers") + 1] = "1"
    args[args.index("--artifacts-destination") + 1] = str(tmp_path / "artifacts")
    # The test reaches it on its own port besides the manifest's names.
    args[args.index("--allowed-hosts") + 1] += f",127.0.0.1:{port}"
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path}/auth.db\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", lambda: server.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


def test_manifest_mlflow_requires_a_user_and_exact_hosts(manifest_server, monkeypatch):
    search = f"{manifest_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(f"{manifest_server}/health") == 200  # the probes need no user
    assert http_status(search) == 401
    assert http_status(search, user=(ADMIN[0], "wrong")) == 401
    assert http_status(search, user=ADMIN) == 200
    assert http_status(search, host="frost-mlflow:5000", user=ADMIN) == 200  # the Service name, from a pod
    assert http_status(search, host="frost-mlflow.evil.tld", user=ADMIN) == 403
    assert http_status(search, host="frost-mlflow.evil.tld:5000", user=ADMIN) == 403

    # The sweeps' non-admin user, created as deploy/README.md says, logs its own runs.
    from mlflow.server.auth.client import AuthServiceClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    AuthServiceClient(manifest_server).create_user(*SWEEPS)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", SWEEPS[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SWEEPS[1])
    client = MlflowClient(manifest_server)
    run = client.create_run(client.create_experiment("deploy-auth"))
    client.log_metric(run.info.run_id, "ap", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"ap": 0.5}
    assert http_status(search, user=SWEEPS) == 200
