"""The embedded default listens on loopback only: every socket `frost run`'s Ray runtime opens is 127.0.0.1."""

from __future__ import annotations

import json
import os

import psutil
import pytest
import yaml
from helpers import frost, sigkill, started_trials, tiny_sweep, wait_until

from service.cluster.loopback import is_loopback

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening(pid: int) -> set[tuple[str, str]]:
    """(process name, address) of every listening TCP socket of `pid` and its descendants."""
    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            found |= {
                (proc.name(), conn.laddr.ip)
                for conn in proc.net_connections(kind="inet")
                if conn.status == psutil.CONN_LISTEN
            }
        except psutil.Error:
            pass  # exited meanwhile
    return found


def test_embedded_runtime_listens_on_loopback_only(tmp_path):
    spec = tiny_sweep("loopback", lrs=[0.02], epochs=2)
    path = tmp_path / "loopback.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    trials = root / "sweeps" / "loopback" / "trials"
    # Whatever frost does about loopback, it does itself: the variable the tests set is not passed on.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    driver = frost("run", str(path), "--json", root=root, start_new_session=True, env=env)
    try:
        wait_until(lambda: started_trials(trials), driver, 240, "a trial started")
        sockets = listening(driver.pid)
        names = {name for name, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # the runtime's servers were seen
        assert {ip for _, ip in sockets} <= LOOPBACK, sorted(sockets)
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["trials"][0]["state"] == "TERMINATED"
    finally:
        if driver.poll() is None:
            sigkill(driver)


@pytest.mark.parametrize(
    ("address", "local"),
    [(None, True), ("127.0.0.1:6380", True), ("localhost:6380", True), ("ray://127.0.0.1:10001", True),
     ("10.0.0.5:6379", False), ("auto", False), ("ray://head.example:10001", False)],
)  # fmt: skip
def test_only_local_addresses_are_pinned(address, local):
    assert is_loopback(address) is local
