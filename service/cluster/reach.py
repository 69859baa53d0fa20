"""Fail fast on a Ray cluster that is not there, or that will not take our token.

`ray.init(address=HOST:PORT)` to an address where nothing listens retries for minutes, and the Jobs client's
errors span a screen. Before connecting, `check_reachable` answers in seconds with one line: nothing listens
at HOST:PORT, or the cluster refused (or wanted) the token. How Ray 2.60 refuses a token, and what each
check costs, is in docs/ray-auth.md.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from trainers.errors import FrostError, shown

TOKEN_HELP = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
# A fresh interpreter asks the GCS for its cluster id, as `ray.init` does first: Ray's own client presents the
# token from the environment (or ~/.ray/auth_token) and Ray's own error says whether it was refused. A fresh
# process, because Ray's client waits ~40 s on a port that is not a GCS and cannot be interrupted in-process.
_GCS_PROBE = """
import sys
from ray._raylet import GcsClient
print("connecting", flush=True)
try:
    GcsClient(address=sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0] if str(exc).strip() else '', file=sys.stderr)
    sys.exit(3 if type(exc).__name__ == "AuthenticationError" else 4)
"""


def check_reachable(address: str, timeout: float, token: str | None = None) -> None:
    """Raise FrostError (one line) unless a Ray cluster answers at `address` within `timeout` seconds.

    `address` is what a user passes as --address: `HOST:PORT` (the GCS, for `frost run`), `ray://HOST:PORT`
    (Ray client: reachability only) or `http(s)://HOST:PORT` (the Jobs API, for `frost submit/logs/stop/
    status`; `token` is sent as Ray's clients send it). `auto` (the cluster this process runs on) is not
    checked. A token is checked where Ray lets us do it cheaply: the Jobs API and the GCS.
    """
    if address == "auto":
        return
    deadline = time.monotonic() + timeout
    scheme, host, port = split_address(address)
    what = "the Ray Jobs API" if scheme in ("http", "https") else "the Ray cluster"
    _check_listening(f"{what} at {address}", host, port, timeout)
    if scheme in ("http", "https"):
        _check_jobs_api(address.rstrip("/"), token, max(deadline - time.monotonic(), 1.0))
    elif scheme == "gcs":
        _check_gcs(address, max(deadline - time.monotonic(), 1.0))


def split_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port); a bare HOST:PORT is the GCS (`gcs`)."""
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if not parts.hostname or (port or default) is None:
        raise FrostError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or http(s)://HOST:PORT")
    return parts.scheme, parts.hostname, port or default or 0


def _check_listening(where: str, host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise FrostError(f"cannot reach {where}: unknown host {host} ({exc.strerror})") from None
    except TimeoutError:
        raise FrostError(f"cannot reach {where}: no answer from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FrostError(f"cannot reach {where}: nothing listens at {host}:{port} ({reason})") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows a redirect with the request's headers, Authorization included: a Jobs address that
    redirects (or a man in the middle of plain http://) would receive the Ray token. Never follow one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def _check_jobs_api(url: str, token: str | None, timeout: float) -> None:
    """GET /api/version, which token auth guards: 401 no token, 403 a wrong one (Ray 2.60)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/api/version", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(4096)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            target = shown(exc.headers.get("Location", "elsewhere"))
            raise FrostError(
                f"{url} answered GET /api/version with a redirect (HTTP {exc.code}) to {target}; frost does "
                "not follow redirects with the Ray token: give the Jobs API's own address"
            ) from None
        if exc.code == 401:
            raise FrostError(
                f"the Ray cluster at {url} requires a token and none was found ({TOKEN_HELP})"
            ) from None
        if exc.code == 403:
            raise FrostError(f"the Ray cluster at {url} refused the token (from {TOKEN_HELP})") from None
        raise FrostError(f"{url} is not a Ray Jobs API: GET /api/version answered HTTP {exc.code}") from None
    except http.client.HTTPException:  # e.g. an answer that is not HTTP: the GCS's gRPC port
        raise FrostError(f"{url} is not a Ray Jobs API: it does not answer HTTP (the GCS port?)") from None
    except (OSError, ValueError) as exc:  # URLError, a timeout, a reset connection, TLS
        reason = getattr(exc, "reason", None) or exc
        raise FrostError(f"cannot reach the Ray Jobs API at {url}: {reason}") from None
    try:
        json.loads(body)["ray_version"]
    except (ValueError, KeyError, TypeError):
        raise FrostError(f"{url} is not a Ray Jobs API: GET /api/version gave no Ray version") from None


def _check_gcs(address: str, timeout: float) -> None:
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _GCS_PROBE, address],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        started = expired.stdout or b""  # bytes on POSIX even in text mode: read before decoding
        if b"connecting" not in (started if isinstance(started, bytes) else started.encode()):
            return  # this machine was too slow to even import Ray: no verdict, let Ray itself try
        raise FrostError(
            f"the Ray cluster at {address} did not answer within {timeout:.0f} s (is it Ray's GCS port?)"
        ) from None
    if probe.returncode == 3:
        # `ray.init` with an explicit address presents a token only when RAY_AUTH_MODE=token.
        mode = os.environ.get("RAY_AUTH_MODE", "")
        hint = (
            ""
            if mode.lower() == "token"
            else f"; RAY_AUTH_MODE is {mode or 'unset'}, set RAY_AUTH_MODE=token"
        )
        raise FrostError(
            f"the Ray cluster at {address} refused the token (from {TOKEN_HELP}): missing or wrong{hint}"
        )
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise FrostError(f"cannot reach the Ray cluster at {address}: {detail}")
