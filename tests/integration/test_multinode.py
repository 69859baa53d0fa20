"""A worker node of a real 2-node Ray cluster dies mid-trial: the sweep still ends with every trial complete.

deploy/local-cluster.sh starts a head and one worker node (1 CPU each) on free loopback ports, token auth on;
`frost run --address` attaches a separate driver process to it. Once a trial trains on the worker node and has
checkpointed an epoch, every process of that node is SIGKILLed just after the trial's next epoch checkpoint
lands (a lost machine mid-epoch; the head and the other trial are untouched). Ray Tune retries the trial on
the head, where it resumes from its own newest epoch checkpoint: at most the epoch in flight runs twice, and
its one MLflow run holds every epoch once.

A node's processes are its session: the script starts each node with `setsid` and records that PID, so every
process of the node has it as session id (Ray puts its workers in process groups of their own, not in the
node's). The test signals only those sessions, and checks at the end that none of their processes is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import free_port, run_cli, tiny_sweep, tracked_once

pytestmark = pytest.mark.integration

EPOCHS = 8  # about 1.5 s each here: the kill lands a few epochs into the trial
# Two trials, one CPU each, two nodes of one CPU: one trial trains on each node.
SWEEP = tiny_sweep("multinode", lrs=[0.05, 0.04], epochs=EPOCHS, failures=2, warmup_steps=0)

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local-cluster.sh"


# ---------------------------------------------------------------------------------------------- processes
def session_members(sid: int) -> set[int]:
    """Live processes of session `sid` (zombies are already dead: only their parent's wait is missing)."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            members.add(pid)
    return members


def kill_session(sid: int, timeout: float = 60) -> set[int]:
    """SIGKILL every process of session `sid` until none is left; returns the PIDs it killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while alive := session_members(sid):
        assert time.monotonic() < deadline, f"session {sid} still has processes {sorted(alive)}"
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= alive
        time.sleep(0.2)
    return killed


@dataclass
class Cluster:
    address: str  # the GCS address a driver attaches to
    state: Path
    env: dict[str, str]  # what a client needs: the variables `start` tells it to export
    nodes: dict[str, int]  # node name -> PID of its `ray start`, which is also its session id

    def node_of(self, pid: int) -> str | None:
        """The node a live process belongs to, None when it is gone (or not the cluster's)."""
        try:
            sid = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((name for name, leader in self.nodes.items() if leader == sid), None)

    def script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), *args, "--state-dir", str(self.state)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def recorded_nodes(state: Path) -> dict[str, int]:
    """The script's pid files (`PID NAME`), each checked to be the `ray start` of this state directory."""
    nodes = {}
    for pidfile in state.glob("*.pid"):
        pid, name = pidfile.read_text().split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"--temp-dir {state}/{name} " in cmdline, (pidfile, cmdline)
        assert os.getsid(int(pid)) == int(pid), f"{name} is not the leader of its own session"
        nodes[name] = int(pid)
    return nodes


@pytest.fixture
def cluster():
    """Head + 1 worker node on 127.0.0.1 (free ports, token auth); stopped by the script, nothing left."""
    # Short: Ray's Unix socket paths under the state dir must stay under 107 characters.
    state = Path(tempfile.mkdtemp(prefix="frm-", dir="/tmp"))
    ports = [free_port() for _ in range(3)]
    assert 6379 not in ports and len(set(ports)) == 3
    env = {**os.environ, "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    args = ["--port", str(ports[0]), "--dashboard-port", str(ports[1]), "--client-port", str(ports[2])]
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", "--workers", "1", "--cpus", "1", *args, "--state-dir", str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    sessions: dict[str, int] = {}
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-3000:]
        sessions = recorded_nodes(state)
        assert f"Ray cluster up on 127.0.0.1:{ports[0]}: head + 1 worker node(s)" in started.stdout
        # The client variables, as `start` prints them: `export RAY_AUTH_MODE=token RAY_ENABLE_...=0`.
        exports = [
            line.split()[1:] for line in started.stdout.splitlines() if line.strip().startswith("export ")
        ]
        assert len(exports) == 1, started.stdout
        client_env = dict(pair.split("=", 1) for pair in shlex.split(" ".join(exports[0])))
        assert client_env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0", started.stdout
        assert client_env.get("RAY_AUTH_MODE") == "token", started.stdout
        assert sorted(sessions) == ["head", "worker-1"]
        yield Cluster(f"127.0.0.1:{ports[0]}", state, {**env, **client_env}, sessions)
    finally:
        stopped = subprocess.run(
            ["bash", str(SCRIPT), "stop", "--state-dir", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        # Whatever the script left of its nodes is ended here (by session), and then reported.
        left = {name: kill_session(sid) for name, sid in sessions.items()}
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not any(left.values()), f"processes left after `stop`: {left}"


# ---------------------------------------------------------------------------------------------- the sweep
def reports(sweep_dir: Path) -> dict[str, list[dict]]:
    """Every result Ray Tune recorded, per trial (result.json: one JSON object a line, `pid` included)."""
    found: dict[str, list[dict]] = {}
    for path in sweep_dir.glob("frost_trainable_*/result.json"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            found.setdefault(record["trial_id"], []).append(record)
    return found


def newest_epoch(trial_dir: Path) -> int:
    epochs = [int(p.name.split("-")[1]) for p in (trial_dir / "checkpoints").glob("epoch-[0-9]*[0-9]")]
    return max(epochs, default=0)


def test_a_worker_node_lost_mid_trial_is_retried_on_the_head_from_its_newest_checkpoint(cluster, tmp_path):
    spec = tmp_path / "multinode.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    root = tmp_path / "root"
    sweep_dir = root / "sweeps" / "multinode"
    out_path, err_path = tmp_path / "driver.out", tmp_path / "driver.err"
    env = {**cluster.env, "FROST_HOME": str(root), "RAY_DEDUP_LOGS": "0"}
    command = [sys.executable, "-m", "service.cli", "run", str(spec), "--address", cluster.address]
    command += ["--root", str(root), "--json"]

    def driver_log() -> str:
        return err_path.read_text()[-4000:]

    where: dict[int, str | None] = {}  # pid of each trial process -> its node, seen while it ran
    victim, kill_after, at_kill = None, 0, 0
    with out_path.open("w") as out, err_path.open("w") as err:
        # Its own session: whatever happens, the finally below ends exactly this driver.
        driver = subprocess.Popen(
            command, env=env, stdout=out, stderr=err, cwd=tmp_path, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 420
        while driver.poll() is None and not at_kill:
            assert time.monotonic() < deadline, (
                "no trial trained on the worker node in time:\n" + driver_log()
            )
            if victim is None:
                seen = reports(sweep_dir)
                for records in seen.values():
                    for pid in {r["pid"] for r in records} - where.keys():
                        where[pid] = cluster.node_of(pid)
                on_worker = [
                    trial_id
                    for trial_id, records in seen.items()
                    if where[records[-1]["pid"]] == "worker-1"
                    and 1 <= newest_epoch(sweep_dir / "trials" / trial_id) < EPOCHS - 2
                ]
                if on_worker:
                    victim = on_worker[0]
                    kill_after = newest_epoch(sweep_dir / "trials" / victim) + 1
            elif newest_epoch(sweep_dir / "trials" / victim) >= kill_after:
                # The lost machine: every process of the worker node at once, no chance to clean up. The
                # moment is just after an epoch checkpoint landed, so every run loses the same thing: the
                # epoch in flight, a whole epoch away from the next checkpoint write.
                killed = kill_session(cluster.nodes["worker-1"])
                assert reports(sweep_dir)[victim][-1]["pid"] in killed
                at_kill = newest_epoch(sweep_dir / "trials" / victim)
                status = cluster.script("status")
                assert "worker-1: not running" in status.stdout, status.stdout + status.stderr
                assert "head: running" in status.stdout, status.stdout + status.stderr
            time.sleep(0.25 if victim is None else 0.02)
        # Until the sweep ends: which node each new trial process (the retry) runs on.
        while driver.poll() is None:
            assert time.monotonic() < deadline, "the sweep did not finish in time:\n" + driver_log()
            for records in reports(sweep_dir).values():
                for pid in {r["pid"] for r in records} - where.keys():
                    where[pid] = cluster.node_of(pid)
            time.sleep(0.25)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)

    assert at_kill, "no trial was seen training on the worker node mid-trial:\n" + driver_log()
    assert driver.returncode == 0, f"the driver exited {driver.returncode}:\n{driver_log()}"
    summary = json.loads(out_path.read_text().strip().splitlines()[-1])
    # A driver in a process of its own (MLflow and Ray imported fresh): its console is still frost's lines only.
    foreign = [
        ln for ln in err_path.read_text().splitlines() if ln.strip() and not ln.startswith(("frost: ", "  "))
    ]
    assert not foreign, foreign[:10]

    # Every trial ran all its epochs and completed; the sweep is ok.
    assert summary["ok"] is True and len(summary["trials"]) == 2
    for trial in summary["trials"]:
        assert (trial["state"], trial["fate"], trial["epochs"]) == ("TERMINATED", "completed", EPOCHS), trial
    assert victim in {t["trial_id"] for t in summary["trials"]}

    # The victim: first on the worker node, then retried by a new process on the head.
    records = reports(sweep_dir)[victim]
    attempts = list(dict.fromkeys(r["pid"] for r in records))  # pids in order of their first report
    assert len(attempts) == 2, (attempts, where)
    assert [where[pid] for pid in attempts] == ["worker-1", "head"], (attempts, where)
    assert {r["epoch"] for r in records if r["pid"] == attempts[1]} >= set(range(at_kill + 1, EPOCHS + 1))

    # ... resuming from the newest checkpoint it had written: every epoch the lost attempt finished is in that
    # checkpoint, so only the epoch in flight at the kill can have run twice.
    # (each trial's own lines are in its trial.log: worker output stays off the driver's console)
    trial_log = (sweep_dir / "trials" / victim / "trial.log").read_text()
    resumed = re.findall(rf"resuming \S+/trials/{victim} from epoch-(\d+)", trial_log)
    assert [int(epoch) for epoch in resumed] == [at_kill], driver_log()
    assert max(r["epoch"] for r in records if r["pid"] == attempts[0]) <= at_kill < EPOCHS
    for trial in summary["trials"]:
        final = sweep_dir / "trials" / trial["trial_id"] / "checkpoints" / f"epoch-{EPOCHS:04d}"
        history = json.loads((final / "history.json").read_text())
        assert [record["epoch"] for record in history] == list(range(1, EPOCHS + 1))

    # MLflow: one parent, exactly one run per trial (the retry reopened the victim's), every epoch once.
    runs = tracked_once(summary, "multinode")
    assert all(run.info.status == "FINISHED" for run in runs.values())

    # The sweep's report, with the victim's folder gone (a node without shared storage keeps its files):
    # the trial that trained on the worker node is reported from MLflow alone, with MLflow's figures.
    shutil.rmtree(sweep_dir / "trials" / victim)
    code, out, err = run_cli(["report", "multinode", "--root", str(root), "--format", "json"])
    assert code == 0, err[-3000:]
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert len(rows) == 2 and all(row["n"] == 1 and not row["stopped"] for row in rows), rows
    run = runs[victim]
    row = next(r for r in rows if r["capacity"] == run.data.tags["frost.capacity"])
    assert (row["freeze"], row["AP"]) == (run.data.tags["freeze"], run.data.metrics["AP"])


def test_two_worker_trials_spread_their_workers_over_both_nodes(cluster, tmp_path):
    """Two trials of 2 data-parallel workers (Ray Train, gloo) on head + worker node of 1 CPU each: a trial's
    workers can only fit one per node, the trials run one after the other, and each ends with one MLflow run."""
    sweep = tiny_sweep("ddp-nodes", lrs=[0.05, 0.04], epochs=2, concurrent=2, warmup_steps=0)
    sweep["resources"] = {"workers_per_trial": 2, "cpus": 1, "placement": "spread"}
    spec = tmp_path / "ddp-nodes.yaml"
    spec.write_text(yaml.safe_dump(sweep))
    root = tmp_path / "root"
    env = {**cluster.env, "FROST_HOME": str(root)}
    validate = subprocess.run(
        [sys.executable, "-m", "service.cli", "validate", str(spec), "--address", cluster.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "2 node(s); a trial needs 2 workers x {CPU: 1}; 1 trial(s) at once" in validate.stdout
    command = [sys.executable, "-m", "service.cli", "run", str(spec), "--address", cluster.address]
    done = subprocess.run(
        [*command, "--root", str(root), "--json"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [t["epochs"] for t in summary["trials"]] == [2, 2], summary["trials"]
    for trial in summary["trials"]:
        ranks = sorted(
            (root / "sweeps" / "ddp-nodes" / "trials" / trial["trial_id"] / "workers").glob("*.json")
        )
        placed = [json.loads(path.read_text()) for path in ranks]
        assert [p["rank"] for p in placed] == [0, 1] and {p["world_size"] for p in placed} == {2}
        assert len({p["node_id"] for p in placed}) == 2, placed  # one worker on each node
    runs = tracked_once(summary, "ddp-nodes")
    assert all(run.data.metrics["workers"] == 2 for run in runs.values())
