"""Sweeps as Ray Jobs: `frost submit`, `frost logs`, `frost stop` and the job state of `frost status`.

The sweep driver (`frost run ... --address auto`) runs on the cluster's head as a Ray Job, so a laptop can
submit and disconnect. The job ships everything it needs: the validated spec in its working_dir and the
project's packages as py_modules, so the head needs Ray and the dependencies, not this checkout.

Idempotent submission: a job's submission id is `frost-<name>-<spec digest>`. Submitting the same spec while
its job is pending, running or done changes nothing; a failed or stopped job is submitted again under
`...-r<n>` (the Jobs API never reuses a submission id), and the driver resumes the sweep from its storage.
Token authentication stays on: the client sends the token of `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
`~/.ray/auth_token`.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.cluster.reach import check_reachable
from sweeps.spec import SweepSpec, dump_sweep_spec
from trainers.errors import FrostError

# The shipped spec's name inside the job's working_dir (the driver's working directory on the head).
JOB_SPEC_FILE = "frost-sweep.yaml"
# Metadata key that marks a job as a frost sweep: how `logs`/`stop`/`status` find a sweep's jobs by name.
SWEEP_KEY = "frost_sweep"
ACTIVE = ("PENDING", "RUNNING")
KEPT = ("PENDING", "RUNNING", "SUCCEEDED")  # a job in one of these is not submitted again
PACKAGES = ("trainers", "sweeps", "service")
STOP_GRACE_S = 60  # seconds between `frost stop`'s SIGTERM and Ray's SIGKILL of the driver
REACH_TIMEOUT_S = 10.0  # an unreachable head or a refused token is reported within this, before any upload
# Left out of what the job uploads: caches and anything a developer may have beside the code.
EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", "frost-runs", "*.egg-info"]


def jobs_address(address: str | None) -> str:
    """--address, else Ray's own RAY_API_SERVER_ADDRESS; it must be the head's http(s)://HOST:PORT."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise FrostError("--address is required: the Ray Jobs API of the head, e.g. http://127.0.0.1:8265")
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FrostError(
            f"--address {address!r} is not a Ray Jobs API address: give http(s)://HEAD:PORT (dashboard port, "
            "8265 by default), not the GCS address"
        )
    return address.rstrip("/")


def submission_id(spec: SweepSpec) -> str:
    return f"frost-{spec.name}-{spec.digest()}"


def connect(address: str | None) -> Any:
    """A JobSubmissionClient for the head, or FrostError saying why not (unreachable, token refused)."""
    url = jobs_address(address)
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    if token:
        warn_token_in_clear(url)
    check_reachable(url, REACH_TIMEOUT_S, token=token)
    # The token goes in our own header: Ray's client attaches it only when its auth mode, read once per
    # process, says "token", which a process that imported Ray before RAY_AUTH_MODE was set never sees.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # ConnectionError, RuntimeError (HTTP), AuthenticationError, ValueError
        raise FrostError(f"cannot reach the Ray Jobs API at {url}: {_first_line(exc)}") from None


def auth_token() -> str | None:
    """The cluster's token, where Ray's own clients look: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def token_in_clear(address: str) -> bool:
    """Whether Ray's token, sent to this address, crosses a network unencrypted: plain http:// (Jobs API), or
    gRPC (a GCS HOST:PORT, ray://) without Ray's TLS (RAY_USE_TLS), to a host that is not this machine's
    loopback. Decided from the address alone: no name is resolved, so a host name other than localhost counts
    as remote. `auto` is the cluster this process runs in."""
    if address == "auto":
        return False
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.scheme == "https" or not parts.hostname:
        return False
    if parts.scheme != "http" and os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return False
    if parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def warn_token_in_clear(address: str) -> bool:
    """One warning line on stderr when `token_in_clear(address)`; True when it warned. Sends nothing."""
    if not token_in_clear(address):
        return False
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    channel = "plain http://" if parts.scheme == "http" else "gRPC without TLS"
    print(
        f"frost: warning: sending the Ray auth token over {channel} to {parts.hostname}: anyone on the path can "
        "read it; use an SSH tunnel or kubectl port-forward to 127.0.0.1, or TLS",
        file=sys.stderr,
    )
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(exc).__name__


def _call(url: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except FrostError:
        raise
    except Exception as exc:
        raise FrostError(f"{what} failed at {url}: {_first_line(exc)}") from None


def package_dirs() -> list[str]:
    """The project's packages as local directories, shipped as py_modules (the trials import them too)."""
    return [str(Path(str(importlib.import_module(name).__file__)).parent) for name in PACKAGES]


def entrypoint(root: str | None, force: bool = False) -> str:
    """The driver's command on the head. Without --root the head's FROST_HOME (or ./frost-runs) decides."""
    command = ["python", "-m", "service.cli", "run", JOB_SPEC_FILE, "--address", "auto"]
    command += ["--root", root] if root else []
    command += ["--force"] if force else []
    command += ["--json"]
    return shlex.join(command)


def sweep_jobs(client: Any, url: str, name: str) -> list[Any]:
    """The jobs of sweep `name`, oldest first."""
    jobs = _call(url, "listing jobs", client.list_jobs)
    mine = [j for j in jobs if (j.metadata or {}).get(SWEEP_KEY) == name]
    return sorted(mine, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def latest_job(client: Any, url: str, name: str) -> Any:
    jobs = sweep_jobs(client, url, name)
    if not jobs:
        raise FrostError(f"no Ray Job of a sweep named '{name}' at {url} (submit one with `frost submit`)")
    return jobs[-1]


def _next_submission_id(base: str, taken: set[str]) -> str:
    n = 2
    while f"{base}-r{n}" in taken:
        n += 1
    return f"{base}-r{n}"


def submit_sweep(
    spec: SweepSpec,
    address: str | None,
    root: str | None = None,
    extra_env: dict[str, str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Submit the sweep's driver as a Ray Job, unless a job of the same spec is pending, running or done.

    Returns `{"name", "submission_id", "status", "address", "submitted"}`.
    """
    url = jobs_address(address)
    if root and not Path(root).is_absolute():
        # The driver runs in the job's own working directory on the head: a relative root would land there.
        raise FrostError(f"--root {root!r} must be an absolute path on the cluster (its shared storage)")
    client = connect(url)
    base = submission_id(spec)
    jobs = sweep_jobs(client, url, spec.name)
    other = [j for j in jobs if _status(j.status) in ACTIVE and not (j.submission_id or "").startswith(base)]
    if other:
        # Two drivers on one sweep would fight over its storage; the running one keeps its spec.
        raise FrostError(
            f"sweep '{spec.name}' already runs as job {other[-1].submission_id} with a different spec; "
            f"stop it first (frost stop {spec.name} --address {url}) or give the sweep another name"
        )
    same_spec = [j for j in jobs if (j.submission_id or "").startswith(base)]
    kept = [j for j in same_spec if _status(j.status) in KEPT]
    if kept:
        job = kept[-1]
        return _result(spec.name, job.submission_id, _status(job.status), url, submitted=False)
    taken = {j.submission_id for j in same_spec}
    job_id = base if base not in taken else _next_submission_id(base, taken)
    with tempfile.TemporaryDirectory(prefix="frost-submit-") as folder:
        dump_sweep_spec(spec, Path(folder) / JOB_SPEC_FILE)
        runtime_env: dict[str, Any] = {
            "working_dir": folder,
            "py_modules": package_dirs(),
            "excludes": EXCLUDES,
        }
        # `frost stop`: Ray's job supervisor (which runs with this runtime_env) sends SIGTERM, which the driver
        # turns into Tune's graceful stop; give it time to mark the runs interrupted before Ray's SIGKILL.
        runtime_env["env_vars"] = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **(extra_env or {})}
        try:
            client.submit_job(
                entrypoint=entrypoint(root, force),
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={SWEEP_KEY: spec.name, "frost_spec_digest": spec.digest()},
            )
        except Exception as exc:
            # Two submitters racing on the same spec: the second one finds the first one's job.
            if "already exists" in str(exc):
                status = _call(url, "reading the job", client.get_job_status, job_id)
                return _result(spec.name, job_id, _status(status), url, submitted=False)
            raise FrostError(f"submitting the sweep to {url} failed: {_first_line(exc)}") from None
    status = _call(url, "reading the job", client.get_job_status, job_id)
    return _result(spec.name, job_id, _status(status), url, submitted=True)


def _status(status: Any) -> str:
    return str(getattr(status, "value", status))


def _result(name: str, job_id: str, status: str, url: str, submitted: bool) -> dict[str, Any]:
    return {"name": name, "submission_id": job_id, "status": status, "address": url, "submitted": submitted}


def job_logs(name: str, address: str | None) -> tuple[str, str]:
    """(submission id, logs) of the sweep's newest job."""
    url = jobs_address(address)
    client = connect(url)
    job = latest_job(client, url, name)
    return job.submission_id, _call(url, "reading the job's logs", client.get_job_logs, job.submission_id)


def follow_job_logs(name: str, address: str | None, write: Any) -> str:
    """Stream the sweep's newest job's logs to `write` until the job ends; returns its final status."""
    import asyncio

    url = jobs_address(address)
    client = connect(url)
    job = latest_job(client, url, name)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job.submission_id):
            write(chunk)

    _call(url, "following the job's logs", asyncio.run, tail())
    return _status(_call(url, "reading the job", client.get_job_status, job.submission_id))


def stop_sweep_job(name: str, address: str | None) -> dict[str, Any]:
    """Ask Ray to stop the sweep's newest job; its state in storage lets `frost submit`/`resume` continue it."""
    url = jobs_address(address)
    client = connect(url)
    job = latest_job(client, url, name)
    status = _status(job.status)
    stopped = False
    if status in ACTIVE:
        stopped = bool(_call(url, "stopping the job", client.stop_job, job.submission_id))
        status = _status(_call(url, "reading the job", client.get_job_status, job.submission_id))
    return {"name": name, "submission_id": job.submission_id, "status": status, "stopped": stopped}


def job_state(name: str, address: str | None) -> dict[str, Any] | None:
    """The newest job of the sweep as `{"submission_id", "status", "message"}`, None when it has none."""
    url = jobs_address(address)
    client = connect(url)
    jobs = sweep_jobs(client, url, name)
    if not jobs:
        return None
    job = jobs[-1]
    return {"submission_id": job.submission_id, "status": _status(job.status), "message": job.message}


def wait_for_job(name: str, address: str | None, statuses: tuple[str, ...], timeout: float) -> str:
    """Poll the sweep's newest job until its status is one of `statuses`; returns it (tests, scripts)."""
    url = jobs_address(address)
    client = connect(url)
    deadline = time.monotonic() + timeout
    while True:
        status = _status(latest_job(client, url, name).status)
        if status in statuses or time.monotonic() > deadline:
            return status
        time.sleep(1.0)
