"""Starting or attaching to Ray, and what Ray may print while a sweep runs.

The embedded default is a private Ray runtime on loopback only (service/cluster/loopback.py sets the environment
that keeps every socket on 127.0.0.1 before Ray is imported; docs/stack.md says why that is needed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from sweeps.spec import SweepSpec
from trainers.errors import FrostError
from trainers.logs import log


def check_cluster(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast, in one line, on a cluster that is not there or refuses our token: `ray.init` itself would
    retry for minutes (docs/stack.md). Also warns before a token travels in clear to another host."""
    if not address or address == "auto":
        return
    from service.cluster.jobs import auth_token, warn_token_in_clear
    from service.cluster.reach import check_reachable

    if auth_token():
        warn_token_in_clear(address)
    check_reachable(address, timeout)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_nodes() -> list[dict[str, float]]:
    """The resource totals of every live node of the connected cluster."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def cluster_fit(spec: SweepSpec) -> tuple[int, str]:
    """(how many trials the connected cluster holds at once, and when that is none, one line saying why)."""
    from sweeps.space import describe_trial_needs, trials_that_fit

    nodes = cluster_nodes()
    fits = trials_that_fit(nodes, spec)
    if fits:
        return fits, ""
    have = "; ".join(_node_text(node) for node in nodes) or "no live node"
    return 0, (
        f"resources: one trial needs {describe_trial_needs(spec)} and no trial fits the cluster "
        f"({have}); lower resources.cpus/gpus/workers_per_trial or add nodes"
    )


def check_trials_fit(spec: SweepSpec, address: str | None) -> int:
    """How many trials the connected cluster holds at once. None: refused in one line, since Tune (or Ray
    Train's placement group) would wait forever. An attached cluster may autoscale: only a warning there."""
    fits, why = cluster_fit(spec)
    if not fits:
        if address is None:
            raise FrostError(why)
        log.warning("%s (waiting: the cluster may scale up)", why)
    return fits


def _node_text(node: dict[str, float]) -> str:
    shown = [f"{name} {node[name]:g}" for name in ("CPU", "GPU") if node.get(name)]
    return "node: " + (", ".join(shown) or "no CPU")


TOKEN_FILE = ".ray-auth-token"
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


def project_token(root: Path) -> Path:
    """The embedded runtime's Ray token: made once per project folder, readable by its owner only (Ray's own
    default, ~/.ray/auth_token, is written world-readable)."""
    path = root / TOKEN_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver made it meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def _reload_ray_auth() -> None:
    # Ray caches the authentication mode and the token per process; an in-process restart with another
    # project folder must see the new ones.
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def ray_session(
    address: str | None, root: Path, verbose: bool = False, state_api: bool = False
) -> Iterator[None]:
    """Connect to a cluster, or start the embedded runtime (token auth on, the token in the project folder),
    and shut down what this process started. A process that already has Ray keeps it.

    Workers' output reaches this console only with `verbose` (it stays in Ray's session logs, and each
    trial's own lines in its `trial.log`). `state_api`: the embedded runtime also runs Ray's dashboard (on
    127.0.0.1, a free port), whose state API Ray Train needs to free a stopped trial's workers
    (service/workers/data_parallel.py); off otherwise, as it costs start-up time and memory."""
    if ray.is_initialized():
        yield
        return
    env = {"FROST_HOME": str(root)}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose)
        try:
            yield
        finally:
            ray.shutdown()
        return
    saved = {name: os.environ.get(name) for name in _AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(project_token(root)))
    _reload_ray_auth()
    try:
        # address="local" always starts a new runtime: a bare ray.init() would attach to whatever cluster
        # `ray start` last recorded in /tmp/ray/ray_current_cluster, even a dead one, and hang (docs/stack.md).
        ray.init(
            address="local",
            include_dashboard=state_api,
            dashboard_host="127.0.0.1",
            dashboard_port=_free_loopback_port() if state_api else None,
            runtime_env={"env_vars": env},
            _node_ip_address="127.0.0.1",
            log_to_driver=verbose,
        )
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


# Libraries whose own console lines (Ray's, MLflow's database set-up) go to the sweep's log file by default.
QUIET_LOGGERS = ("ray", "mlflow", "alembic")


@contextlib.contextmanager
def library_logs_to(log_file: Path, verbose: bool) -> Iterator[None]:
    """Ray's and MLflow's driver-side Python logging goes to `log_file` instead of the console (unless
    `verbose`): the console is frost's (service/console.py). So does whatever is printed on stdout meanwhile:
    Ray Tune prints its configuration box and "View detailed results here ... TensorBoard" with `print`, not
    as log records, and `frost run --json`'s stdout must hold frost's lines only."""
    if verbose:
        yield
        return
    # MLflow attaches its console handler when first imported: import it now, so that handler is the one
    # replaced here rather than one added later, mid-sweep, by the tracker's thread.
    import mlflow  # noqa: F401

    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {}
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers, logger.propagate = [handler], False
    try:
        with log_file.open("a") as printed, contextlib.redirect_stdout(printed):
            yield
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
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
