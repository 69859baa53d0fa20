"""`frost train --workers N`: one trial as N data-parallel worker processes on this machine.

The launcher starts N copies of this module's worker (`python -m service.workers.train_workers`), each joining a
`torch.distributed` group at tcp://127.0.0.1:<a free port> (loopback only: gloo and NCCL are told to use the
loopback interface too), then running `run_trial`. Rank 0 prints the final metrics. When a worker dies, the
launcher stops the others by pid and names the rank; starting the same command again resumes from the
newest checkpoint. The worker also runs under torchrun, which sets RANK / WORLD_SIZE / MASTER_ADDR:
`torchrun --nproc-per-node 2 -m service.workers.train_workers TRIAL.yaml --out DIR` (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.errors import FrostError, TrainingError
from trainers.files import atomic_write_json

if TYPE_CHECKING:
    from trainers.config import TrialSpec

WORKERS_FILE = "workers.json"  # in the trial folder: the launcher's and the workers' pids
STOP_GRACE_S = 10.0


# ---------------------------------------------------------------------------------------------- launcher
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_interface() -> str:
    """The loopback interface's name (lo on Linux, lo0 on macOS): where gloo / NCCL open their connections."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"


def worker_env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = loopback_interface()
    # The cores shared out: N processes each using every core would fight over them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def worker_command(
    trial: str | None, overrides: list[str], out: Path, rank: int, workers: int, port: int
) -> list[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [
        sys.executable, "-m", "service.workers.train_workers", *([trial] if trial else []), "--out", str(out), *sets,
        "--rank", str(rank), "--world-size", str(workers), "--init-method", f"tcp://127.0.0.1:{port}",
    ]  # fmt: skip


def launch_workers(
    spec: TrialSpec, trial: str | None, overrides: list[str], out: Path, workers: int
) -> dict[str, Any]:
    """Run the trial (`spec`, read from `trial` and `overrides` by every worker) as `workers` processes;
    rank 0's final metrics, or the error of the worker that failed."""
    if spec.train.batch_size < workers:  # the workers would refuse it too (check_world), one by one
        raise FrostError(
            f"train.batch_size: the global batch of {spec.train.batch_size} images cannot give each of "
            f"{workers} workers an image"
        )
    out.mkdir(parents=True, exist_ok=True)
    port, env = free_port(), worker_env(workers)
    with tempfile.TemporaryFile("w+") as rank0_out:
        procs = [
            subprocess.Popen(
                worker_command(trial, overrides, out, rank, workers, port),
                env=env,
                stdout=rank0_out if rank == 0 else subprocess.DEVNULL,
            )
            for rank in range(workers)
        ]
        atomic_write_json(out / WORKERS_FILE, {"launcher": os.getpid(), "workers": [p.pid for p in procs]})
        try:
            failed = wait_for_workers(procs)
        finally:
            stop_workers(procs)
        if failed is not None:
            raise worker_error(*failed)
        rank0_out.seek(0)
        return dict(json.loads(rank0_out.read().strip().splitlines()[-1]))


def wait_for_workers(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """None when every worker ended well; else (rank, exit code) of the one that failed first. A worker
    killed by a signal goes before one that exited with an error in the same poll: the others' errors
    (a lost connection) follow from it."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            return min(failed, key=lambda item: (item[1] >= 0, item[0]))
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.1)


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every worker still running (by its pid), SIGKILL to those still there after a grace."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def worker_error(rank: int, code: int) -> Exception:
    """One line naming the rank: killed (start again to resume) or exited with its own error (printed above)."""
    if code < 0:
        return TrainingError(
            f"worker rank {rank} was killed by {signal.Signals(-code).name}; the other workers were stopped "
            "(run the same command again to resume from the newest checkpoint)"
        )
    message = (
        f"worker rank {rank} exited with code {code} (its error is above); the other workers were stopped"
    )
    return FrostError(message) if code == 2 else TrainingError(message)


# ---------------------------------------------------------------------------------------------- worker
def _worker_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="frost-train-worker", description="one rank of a data-parallel trial"
    )
    parser.add_argument("trial", nargs="?")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--rank", type=int, default=int(env.get("RANK", "0")))
    parser.add_argument("--world-size", type=int, default=int(env.get("WORLD_SIZE", "1")))
    parser.add_argument("--init-method", default="env://", help="default: torchrun's MASTER_ADDR / PORT")
    return parser


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from trainers.config import load_trial_spec
    from trainers.distributed import default_backend
    from trainers.train import resolve_device, run_trial

    spec = load_trial_spec(args.trial, args.set)
    device = resolve_device(spec.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", args.rank)) % torch.cuda.device_count())
    dist.init_process_group(
        default_backend(device), init_method=args.init_method, rank=args.rank, world_size=args.world_size
    )
    try:
        return run_trial(spec, Path(args.out))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from trainers.logs import log

    args = _worker_parser().parse_args(argv)
    if args.rank != 0:  # rank 0 speaks for the trial; the others only warn
        log.setLevel(logging.WARNING)
    try:
        metrics = run_worker(args)
    except FrostError as exc:
        print(f"frost: worker {args.rank}: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"frost: worker {args.rank}: training failed: {exc}", file=sys.stderr)
        return 1
    if args.rank == 0:
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
