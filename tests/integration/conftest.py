"""Fixtures for integration tests: a Ray runtime, a PostgreSQL database made for the test, an MLflow server.

The MLflow server runs as a real `mlflow server` process bound to 127.0.0.1 (it guards the Host header) on a
free port, with its backend store in a database the fixture creates on the PostgreSQL server named by
FROST_TEST_POSTGRES and drops afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from helpers import free_port

POSTGRES_ENV = "FROST_TEST_POSTGRES"


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """A local Ray runtime for the session (2 CPUs, no dashboard, loopback only)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    if started:
        ray.shutdown()


def _with_database(uri: str, name: str, driver: str | None = None) -> str:
    parts = urlsplit(uri)
    scheme = f"postgresql+{driver}" if driver else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, path=f"/{name}"))


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URI for psycopg2), dropped at the end of the module."""
    server_uri = os.environ.get(POSTGRES_ENV)
    if not server_uri:
        pytest.skip(f"{POSTGRES_ENV} not set: no PostgreSQL server given for the tracking-server tests")
    import psycopg2

    name = f"frost_test_{uuid.uuid4().hex[:10]}"

    def execute(sql: str) -> None:
        conn = psycopg2.connect(server_uri)
        conn.autocommit = True  # CREATE / DROP DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    execute(f'CREATE DATABASE "{name}"')
    try:
        # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; psycopg2 is what is installed.
        yield _with_database(server_uri, name, driver="psycopg2")
    finally:
        execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class MlflowServer:
    """One `mlflow server` process on 127.0.0.1:port; stop/start keep the port and the backend store."""

    def __init__(self, backend_uri: str, artifacts_dir: Path, log_path: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = artifacts_dir
        self.log_path = log_path
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # The server's job runner starts ~8 extra processes we do not need on 2 cores.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("a") as log:
            # Own session: the server's uvicorn child is in our process group, stopped with it.
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"mlflow server not healthy after {timeout} s:\n{self.log_path.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        """Terminate the process we started and its children (its own process group), then reap it."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self._reap_group()
        self.proc = None

    def _reap_group(self) -> None:
        """Wait (briefly) for the rest of the group to go: the port must be free for a restart."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def mlflow_server(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A running MLflow tracking server backed by the module's PostgreSQL database."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(postgres_database, folder / "artifacts", folder / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
