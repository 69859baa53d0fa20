"""The project folder and a sweep's folder in it: where they are, who may drive a sweep, what `--force` keeps.

Layout of the project folder (`--root`, else $FROST_HOME, else ./frost-runs):

    sweeps/NAME/frost-sweep.yaml   the sweep's spec, its identity
    sweeps/NAME/tracking.json      trial -> MLflow run map and fates (service/tracking/)
    sweeps/NAME/trials/<id>/       one folder per trial (checkpoints, eval, attempts)
    sweeps/.NAME.lock              one driver per sweep
    sweeps/.replaced/              sweeps replaced with --force, kept whole
    mlflow.db, mlartifacts/        the embedded MLflow store

No Ray here: `frost status` and `frost ls` import this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from service.sweep_folder import SPEC_FILE
from trainers.errors import FrostError, shown
from trainers.files import try_file_lock
from trainers.home import frost_home, use_home
from trainers.logs import log

if TYPE_CHECKING:  # `frost ls` needs no spec parsing: sweeps.spec (pydantic models) is imported where used
    from sweeps.spec import SweepSpec


def project_root(root: str | Path | None) -> Path:
    """--root, else $FROST_HOME, else ./frost-runs. Exported as FROST_HOME so trials share data and weights."""
    path = frost_home(root)
    if path.exists() and not path.is_dir():
        raise FrostError(f"--root: {path} is a file, not a project folder")
    try:
        make_folder(path)
    except OSError as exc:
        raise FrostError(f"--root: cannot create the project folder {path} ({exc.strerror})") from None
    use_home(path)
    return path


def make_folder(path: Path) -> None:
    """`mkdir -p`, the folders it creates writable by their owner only whatever the umask (002 is common):
    frost's own storage must pass `check_private`."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        folder.chmod(folder.stat().st_mode & ~(stat.S_IWGRP | stat.S_IWOTH))


def existing_project_root(root: str | Path | None) -> Path:
    """The project folder for commands that only read it (`ls`, `status`, `report`, `cache`): like
    project_root, but a missing folder is refused rather than created, so a mistyped --root says so instead of
    answering "nothing there"."""
    path = frost_home(root)
    if path.exists() and not path.is_dir():
        raise FrostError(f"--root: {path} is a file, not a project folder")
    if not path.is_dir():
        raise FrostError(
            f"--root: no project folder at {path} (`frost run` creates one; give --root or set FROST_HOME)"
        )
    use_home(path)
    return path


def check_private(*paths: Path) -> None:
    """Refuse storage anyone but its owner may write: Ray Tune unpickles a sweep's experiment state from it on
    restore, so whoever can write there (every user, a group, or the folder's owner when that is someone else)
    can run code as the sweep's owner (docs/stack.md). Each refusal says the command that fixes it."""
    me = os.geteuid()
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mode & stat.S_IWOTH:
            raise FrostError(
                f"{path} is writable by every user: a sweep's storage must be writable only by its owner "
                f"(Ray Tune unpickles its state from there); run `chmod o-w {path}`"
            )
        if info.st_mode & stat.S_IWGRP:
            raise FrostError(
                f"{path} is writable by its group: a sweep's storage must be writable only by its owner "
                f"(Ray Tune unpickles its state from there); run `chmod g-w {path}`"
            )
        if info.st_uid != me:
            raise FrostError(
                f"{path} is owned by uid {info.st_uid}, not by you (uid {me}): its owner can change what Ray "
                f"Tune unpickles from there; use storage of your own, or run `chown {me} {path}` if it is yours"
            )


def sweeps_dir(root: Path) -> Path:
    return root / "sweeps"


def list_sweeps(root: Path) -> list[str]:
    base = sweeps_dir(root)
    return sorted(p.parent.name for p in base.glob(f"*/{SPEC_FILE}")) if base.is_dir() else []


def check_sweep_name(name: str) -> str:
    """A sweep NAME on the command line names a folder under sweeps/, never a path elsewhere."""
    if not name or name != name.strip() or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise FrostError(
            f"sweep name {shown(name)}: a sweep is named by its spec's `name` (no '/', '..' or spaces)"
        )
    return name


def find_sweep(name: str, root: Path) -> Path:
    directory = sweeps_dir(root) / check_sweep_name(name)
    if not (directory / SPEC_FILE).is_file():
        known = ", ".join(list_sweeps(root)) or "none"
        raise FrostError(f"no sweep named '{name}' under {sweeps_dir(root)} (known: {known})")
    return directory


@contextlib.contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """One driver per sweep: running or resuming a sweep that a live driver runs is refused (two drivers would
    fight over its trials, runs and rungs). An OS lock beside the sweep: a driver that dies, even by SIGKILL,
    releases it."""
    with try_file_lock(directory.parent / f".{directory.name}.lock") as handle:
        if handle is None:
            holder = (directory.parent / f".{directory.name}.lock").read_text().strip() or "another driver"
            raise FrostError(
                f"sweep '{directory.name}' is being run by {holder}; wait for it, or stop it first "
                f"(frost stop {directory.name} for a Ray Job, else that driver)"
            )
        handle.truncate(0)
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        yield


def check_same_spec(spec: SweepSpec, directory: Path, force: bool = False) -> None:
    """A sweep's identity is its name: a different spec under the same name is refused, not mixed in.

    With `force`, the old sweep's folder is moved aside (kept whole, under `.replaced/` beside it; its MLflow
    runs stay, tagged with the old spec hash) and the new spec starts afresh under the name.
    """
    from sweeps.spec import dump_sweep_spec, load_sweep_spec, spec_diff

    saved = directory / SPEC_FILE
    if saved.exists():
        previous = load_sweep_spec(saved)
        if previous.digest() == spec.digest():
            return
        diff = "\n".join(f"  {line}" for line in spec_diff(previous, spec))
        if not force:
            raise FrostError(
                f"sweep '{spec.name}' already exists in {directory} with a different spec:\n{diff}\n"
                "give the sweep another name, or pass --force to start it afresh (the old one is kept aside)"
            )
        archive = archive_sweep(previous, spec, directory)
        log.info(
            "--force: sweep '%s' changed:\n%s\nthe old sweep is kept in %s; starting afresh",
            spec.name,
            diff,
            archive,
        )
    dump_sweep_spec(spec, saved)


def archive_sweep(previous: SweepSpec, spec: SweepSpec, directory: Path) -> Path:
    """Move a replaced sweep's folder aside, whole, under `.replaced/NAME-<old digest>-<time>`."""
    remote = [s for s in (previous.storage, spec.storage) if s and "://" in s]
    if remote:
        raise FrostError(
            f"--force: sweep '{spec.name}' keeps its Ray Tune state in remote storage ({remote[0]}); "
            "move or delete it there first, or give the sweep another name"
        )
    archive = (
        directory.parent / ".replaced" / f"{spec.name}-{previous.digest()}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    make_folder(archive.parent)
    directory.rename(archive)
    make_folder(directory)
    return archive
