"""Starting or attaching to Ray, and what Ray may print while a sweep runs.

The embedded default is a private Ray runtime on loopback only (service/loopback.py sets the environment
that keeps every socket on 127.0.0.1 before Ray is imported; docs/stack.md says why that is needed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

log = logging.getLogger("frost")


def check_cluster(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast, in one line, on a cluster that is not there or refuses our token: `ray.init` itself would
    retry for minutes (docs/stack.md). Also warns before a token travels in clear to another host."""
    if not address or address == "auto":
        return
    from service.jobs import auth_token, warn_token_in_clear
    from service.reach import check_reachable

    if auth_token():
        warn_token_in_clear(address)
    check_reachable(address, timeout)


def start_ray(address: str | None, root: Path, verbose: bool = False) -> bool:
    """Connect to a cluster, or start the embedded runtime; False when this process already had Ray.

    Workers' output reaches this console only with `verbose` (it stays in Ray's session logs, and each
    trial's own lines in its `trial.log`)."""
    if ray.is_initialized():
        return False
    env = {"FROST_HOME": str(root)}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose)
    else:
        # address="local" always starts a new runtime: a bare ray.init() would attach to whatever cluster
        # `ray start` last recorded in /tmp/ray/ray_current_cluster, even a dead one, and hang (docs/stack.md).
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env={"env_vars": env},
            _node_ip_address="127.0.0.1",
            log_to_driver=verbose,
        )
    return True


@contextlib.contextmanager
def ray_logs_to(log_file: Path, verbose: bool) -> Iterator[None]:
    """Ray's driver-side Python logging goes to `log_file` instead of the console (unless `verbose`)."""
    if verbose:
        yield
        return
    ray_logger = logging.getLogger("ray")
    saved = ray_logger.handlers[:]
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger.handlers = [handler]
    try:
        yield
    finally:
        ray_logger.handlers = saved
        handler.close()


@contextlib.contextmanager
def sigterm_stops_gracefully() -> Iterator[None]:
    """SIGTERM (`frost stop`, a Kubernetes pod ending) becomes Ray Tune's own graceful stop (SIGUSR1): trials
    stop, their runs are marked interrupted, not left RUNNING, and the sweep resumes later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        log.info("SIGTERM: stopping the sweep (resume it with frost resume / frost submit)")
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
