"""Fail fast on an unreachable cluster (service/cluster/reach.py) and the warning before a token goes out in clear
(service/cluster/jobs.py). Loopback only: nothing here sends a packet to any other address."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import redirect_stderr, redirect_stdout

import pytest

import service.cluster.jobs as jobs
from service.cli import main
from service.cluster.jobs import token_in_clear, warn_token_in_clear
from service.cluster.reach import check_reachable, split_address
from trainers.errors import FrostError

TOKEN_WARNING = "frost: warning: sending the Ray auth token over plain http://"


def closed_port() -> int:
    """A loopback port that nothing listens on (bound once, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_listener():
    """A loopback port that accepts connections and never says a word (not a GCS, not HTTP)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def frost(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ check_reachable
@pytest.mark.parametrize("scheme", ["", "ray://", "http://"])
def test_a_closed_port_fails_at_once_with_one_line(scheme):
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(FrostError) as caught:
        check_reachable(f"{scheme}127.0.0.1:{port}", timeout=10)
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert f"nothing listens at 127.0.0.1:{port} (Connection refused)" in message
    assert "\n" not in message
    assert ("the Ray Jobs API" if scheme == "http://" else "the Ray cluster") in message


def test_a_port_that_is_not_a_gcs_fails_within_the_timeout(silent_listener):
    """Ray's own client would wait ~40 s here; the probe is ended after `timeout`."""
    started = time.monotonic()
    with pytest.raises(FrostError, match=r"did not answer within 3 s \(is it Ray's GCS port\?\)"):
        check_reachable(f"127.0.0.1:{silent_listener}", timeout=3)
    assert time.monotonic() - started < 15


def test_a_jobs_address_that_does_not_speak_http_is_named(silent_listener):
    with pytest.raises(FrostError, match="is not a Ray Jobs API|cannot reach the Ray Jobs API"):
        check_reachable(f"http://127.0.0.1:{silent_listener}", timeout=2)


def test_auto_is_not_checked():
    check_reachable("auto", timeout=0.1)  # the cluster this process runs on: nothing to dial


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("gcs", "10.0.0.5", 6379)),
        ("ray://head:10001", ("ray", "head", 10001)),
        ("http://127.0.0.1:8265", ("http", "127.0.0.1", 8265)),
        ("https://ray.example.com", ("https", "ray.example.com", 443)),
    ],
)
def test_addresses_split_into_scheme_host_port(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", "ray://head", "10.0.0.5:port", "http://:8265"])
def test_an_address_without_a_port_is_a_user_error(address):
    with pytest.raises(FrostError, match="expected HOST:PORT"):
        split_address(address)


def test_frost_logs_at_a_closed_port_exits_2_with_one_line():
    port = closed_port()
    started = time.monotonic()
    code, out, err = frost("logs", "some-sweep", "--address", f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 15
    assert code == 2 and out == ""
    assert err == (
        f"frost: cannot reach the Ray Jobs API at http://127.0.0.1:{port}: "
        f"nothing listens at 127.0.0.1:{port} (Connection refused)\n"
    )


# ------------------------------------------------------------------------------------------ token in clear
@pytest.mark.parametrize(
    ("url", "in_clear"),
    [
        ("http://10.1.2.3:8265", True),
        ("http://192.168.0.7:8265", True),
        ("http://ray-head.example.com:8265", True),
        ("http://[2001:db8::1]:8265", True),
        ("http://127.0.0.1:8265", False),
        ("http://127.8.9.10:8265", False),
        ("http://localhost:8265", False),
        ("http://[::1]:8265", False),
        ("https://10.1.2.3:8265", False),
        ("https://ray-head.example.com", False),
        ("10.1.2.3:6379", True),
        ("ray://10.1.2.3:10001", True),
        ("127.0.0.1:6380", False),
        ("auto", False),
    ],
)
def test_token_in_clear_is_plain_http_to_a_non_loopback_host(url, in_clear, monkeypatch):
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    assert token_in_clear(url) is in_clear


def test_grpc_with_rays_tls_is_not_in_clear(monkeypatch):
    monkeypatch.setenv("RAY_USE_TLS", "1")
    assert token_in_clear("10.1.2.3:6379") is False
    assert token_in_clear("http://10.1.2.3:8265") is True  # the Jobs API's HTTP is not Ray's gRPC TLS


@pytest.fixture
def no_sockets(monkeypatch):
    """Any attempt to open a socket fails the test: the warning must be decided without the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_warning_is_one_stderr_line_and_sends_nothing(no_sockets, capsys, monkeypatch):
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    assert warn_token_in_clear("http://10.1.2.3:8265") is True
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{TOKEN_WARNING} to 10.1.2.3:")
    assert warn_token_in_clear("10.1.2.3:6379") is True  # what `frost run --address` joins
    assert capsys.readouterr().err.startswith(
        "frost: warning: sending the Ray auth token over gRPC without TLS"
    )
    assert warn_token_in_clear("http://127.0.0.1:8265") is False
    assert warn_token_in_clear("https://10.1.2.3:8265") is False
    assert capsys.readouterr().err == ""


def test_connect_warns_before_it_dials(monkeypatch, capsys):
    """`frost submit/logs/stop/status` warn, then check the head; the check is stopped here before any
    packet, so the order is what is tested."""
    dialled = []

    def stop_here(url, timeout, token=None):
        dialled.append((url, token, capsys.readouterr().err))
        raise FrostError("stopped before dialling")

    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")
    monkeypatch.setattr(jobs, "check_reachable", stop_here)
    with pytest.raises(FrostError, match="stopped before dialling"):
        jobs.connect("http://10.1.2.3:8265")
    [(url, token, warned)] = dialled
    assert url == "http://10.1.2.3:8265" and token == "t0ken"
    assert warned.startswith(f"{TOKEN_WARNING} to 10.1.2.3:") and warned.count("\n") == 1


def test_no_warning_without_a_token_or_on_loopback(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    port = closed_port()
    with pytest.raises(FrostError, match="nothing listens"):
        jobs.connect(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")
    with pytest.raises(FrostError, match="nothing listens"):
        jobs.connect(f"http://127.0.0.1:{port}")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_the_jobs_probe_never_follows_a_redirect_with_the_token(code):
    """A Jobs address that redirects elsewhere: the probe stops there, and the token goes nowhere else."""
    import http.server

    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"ray_version": "2.60.0"}')

        def log_message(self, *args):
            pass

    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/api/version"

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(code)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    redirecting = http.server.HTTPServer(("127.0.0.1", 0), Redirecting)
    servers = [elsewhere, redirecting]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        address = f"http://127.0.0.1:{redirecting.server_address[1]}"
        with pytest.raises(FrostError, match=f"redirect \\(HTTP {code}\\)"):
            check_reachable(address, timeout=5, token="s3cret-token")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert seen == []  # the redirect target was never asked, with or without the token
