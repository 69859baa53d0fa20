"""Feature-cache shards on disk: a format that cannot run code when read, verified before it is read.

    MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (JSON) | records | sha256 (32 bytes)

The header holds the full key the shard was written under, the image ids in record order and the numpy
structured dtype of one record (one field per cached map, C x H x W each); the trailing sha256 covers header
and records. Records are memory-mapped on read. docs/feature-cache.md describes the whole cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainers.files import atomic_writer, try_file_lock

MAGIC = b"FROSTFC1"
SUFFIX = ".fc"
LOCK_FILE = ".lock"


class CorruptShard(Exception):
    """A shard that may not be read: wrong magic, header, key, length or checksum."""


@dataclass
class Shard:
    """One opened, verified shard: image id → its cached maps (memory-mapped, read-only)."""

    path: Path
    header: dict[str, Any]
    records: np.ndarray

    def __post_init__(self) -> None:
        self.row = {int(image_id): n for n, image_id in enumerate(self.header["image_ids"])}

    @property
    def names(self) -> list[str]:
        return [field[0] for field in self.header["record"]]


def _record_dtype(fields: list[list[Any]]) -> np.dtype:
    return np.dtype([(name, dtype, tuple(shape)) for name, dtype, shape in fields])


def _read_header(handle: IO[bytes], path: Path) -> tuple[dict[str, Any], int]:
    if handle.read(8) != MAGIC:
        raise CorruptShard(f"{path}: not a feature-cache shard")
    length = int.from_bytes(handle.read(8), "little")
    if length <= 0 or length > 1 << 28:
        raise CorruptShard(f"{path}: bad header length")
    try:
        header = json.loads(handle.read(length))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptShard(f"{path}: unreadable header") from None
    problem = _header_problem(header)
    if problem:  # valid JSON of another shape is as corrupt as garbage: nothing below may index into it
        raise CorruptShard(f"{path}: header {problem}")
    return header, 16 + length


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_problem(header: Any) -> str | None:
    """What is wrong with a parsed header's shape (None when it is one write_shard writes)."""
    if not isinstance(header, dict):
        return "is not an object"
    if not isinstance(header.get("key"), dict):
        return "has no key object"
    ids = header.get("image_ids")
    if not isinstance(ids, list) or not all(_is_count(i) for i in ids):
        return "has no list of image ids"
    fields = header.get("record")
    if not isinstance(fields, list) or not fields:
        return "has no record layout"
    for field in fields:
        if not (
            isinstance(field, list)
            and len(field) == 3
            and isinstance(field[0], str)
            and isinstance(field[1], str)
            and isinstance(field[2], list)
            and all(_is_count(n) for n in field[2])
        ):
            return f"has a malformed record field {str(field)[:80]}"
    try:
        _record_dtype(fields)
    except (TypeError, ValueError) as exc:
        return f"has a record layout numpy refuses ({exc})"
    return None


def read_header(path: Path) -> dict[str, Any]:
    """The header alone, unverified (for `frost cache ls`)."""
    with path.open("rb") as handle:
        return _read_header(handle, path)[0]


def open_shard(path: Path, key: dict[str, Any]) -> Shard:
    """Open a shard written under exactly `key`, after checking its length and checksum, or CorruptShard.

    The records are memory-mapped through the very handle that was verified, never by opening the path again:
    a file swapped in at that path after the check (by whoever can write the cache) is not what gets read."""
    with path.open("rb") as handle:
        header, offset = _read_header(handle, path)
        if header.get("key") != key:
            raise CorruptShard(f"{path}: written under another key")
        dtype = _record_dtype(header["record"])
        count = len(header["image_ids"])
        size = os.fstat(handle.fileno()).st_size
        if size != offset + count * dtype.itemsize + 32:
            raise CorruptShard(f"{path}: {size} bytes, expected {offset + count * dtype.itemsize + 32}")
        handle.seek(0)
        sha = hashlib.sha256()
        remaining = size - 32
        while remaining:
            chunk = handle.read(min(remaining, 1 << 22))
            sha.update(chunk)
            remaining -= len(chunk)
        if handle.read(32) != sha.digest():
            raise CorruptShard(f"{path}: checksum mismatch")
        # The map keeps its own reference to the file, so it stays valid after the handle is closed.
        records = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=(count,))
    return Shard(path, header, records)


def write_shard(
    path: Path, key: dict[str, Any], image_ids: list[int], batches: Iterator[dict[str, np.ndarray]]
) -> int:
    """Stream the maps of `image_ids` (in order, batch by batch) into a shard atomically; returns its bytes.

    The record layout is read off the first batch; nothing but that batch is held in memory.
    """
    first = next(batches)
    fields = [[name, str(value.dtype), list(value.shape[1:])] for name, value in first.items()]
    dtype = _record_dtype(fields)
    header = json.dumps({"key": key, "image_ids": image_ids, "record": fields}, sort_keys=True).encode()
    sha = hashlib.sha256()
    written = 0
    with atomic_writer(path) as handle:
        for part in (MAGIC, len(header).to_bytes(8, "little"), header):
            handle.write(part)
            sha.update(part)
        for maps in itertools.chain([first], batches):
            records = np.zeros(len(next(iter(maps.values()))), dtype=dtype)
            for name, value in maps.items():
                records[name] = value
            data = records.tobytes()
            handle.write(data)
            sha.update(data)
            written += len(records)
        if written != len(image_ids):  # a bug in the builder; never leave a shard that lies about its ids
            raise RuntimeError(f"{path}: {written} records for {len(image_ids)} image ids")
        handle.write(sha.digest())
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------- frost cache
def _shard_files(directory: Path) -> list[Path]:
    """The files that may be shards: regular, and long enough for a magic and a header length. A folder or an
    empty file named *.fc (debris, or planted) is not counted as one."""
    found = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_size > 16:
                found.append(path)
        except OSError:
            continue
    return found


def _bytes_in(directory: Path) -> int:
    total = 0
    for path in directory.iterdir():
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def list_cache(root: Path) -> list[dict[str, Any]]:
    """One row per key directory under `root`: its key (from a shard header), shards and bytes."""
    rows = []
    for directory in (
        sorted(p for p in root.glob("*") if p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    ):
        shards = _shard_files(directory)
        key: dict[str, Any] = {}
        for shard in shards:
            try:
                key = read_header(shard)["key"]
                break
            except (OSError, CorruptShard):
                continue
        rows.append(
            {
                "key": directory.name,
                "backbone": key.get("backbone"),
                "norm": key.get("norm"),
                "cut": key.get("cut"),
                "dtype": key.get("dtype"),
                "shards": [s.name for s in shards],
                "bytes": _bytes_in(directory),
            }
        )
    return rows


def clear_cache(root: Path) -> tuple[int, list[tuple[str, str]]]:
    """Remove every key directory no trial is building right now; (bytes freed, (directory, why) skipped)."""
    freed, busy = 0, []
    for row in list_cache(root):
        directory = root / row["key"]
        try:
            with try_file_lock(directory / LOCK_FILE) as lock:
                if lock is None:
                    busy.append((row["key"], "a trial is building it right now"))
                    continue
                freed += row["bytes"]
                shutil.rmtree(directory, ignore_errors=True)
        except OSError as exc:  # its lock is not a file (a folder, say): nothing says no trial holds it
            busy.append(
                (row["key"], f"its lock {directory / LOCK_FILE} cannot be taken ({exc.strerror or exc})")
            )
    return freed, busy
