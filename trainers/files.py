"""One home for the small file helpers every floor uses: atomic writes, JSON reads, file locks, flattening.

A sweep's files live on storage that several processes (driver, trial workers, other nodes) read and write,
and any of them may be killed at any moment. Hence: every state file is written to a temporary sibling,
fsynced, renamed into place and its directory fsynced, so a reader sees the old file or the new one, never
half of one; locks are fcntl locks, which the kernel releases when their holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from trainers.errors import FrostError


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (temp + fsync + rename + fsync of the directory)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_json(data: Any, indent: int | None = 1) -> str:
    """Strict JSON (a NaN would make the file unreadable to strict parsers: fail loudly instead)."""
    return json.dumps(data, indent=indent, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, to_json(data, indent))


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """For writers that stream (torch.save): yields a binary file; on success it is fsynced and renamed onto
    `path`, on any error it is removed, so neither a half-written file nor `.tmp` debris is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with tmp.open("wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def writable_folder(path: str | Path, what: str) -> Path:
    """`path` as a folder frost may write (created if missing), or a FrostError naming `what` and the path.

    Checked up front, with a real write, so that a folder that is a file, lies under a file or cannot be
    written fails in one line before any work is done, not as a traceback half-way through. A probe file is
    written rather than permission bits read because the bits do not tell (root ignores them; a read-only or
    immutable file system does not show in them)."""
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                where = "is a file" if ancestor == path else f"lies under {ancestor}, which is a file"
                raise FrostError(f"{what}: {path} {where}; give a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise FrostError(f"{what}: {path} is not writable ({exc.strerror or exc})") from None
    return path


def read_json(path: Path, what: str | None = None) -> Any:
    """Parse a JSON file; an unreadable or malformed one is a FrostError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FrostError(f"{what or 'file'} {path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FrostError(f"{what or 'file'} {path}: not readable JSON ({exc})") from None


def read_json_or(path: Path, default: Any) -> Any:
    """Parse a JSON file, or `default` when it is missing, unreadable or malformed (status views, caches)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return default


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[IO[str]]:
    """An exclusive (or `shared`) fcntl lock on `path` (created if missing), waited for; released on exit or
    process death."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[IO[str] | None]:
    """Like file_lock, but yields None at once when another process holds the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists, scalars and empty dicts are leaves."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:  # an empty section is a leaf, so diffs show it
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat
