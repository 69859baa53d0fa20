"""The durable outbox: every operation is on disk (fsynced) before it is queued, and replayed after a crash.

One JSON line per operation, `{"seq": N, "op": {...}}`. The state file records `done_seq`, the newest
operation MLflow has applied; lines at or below it are done. A line cut by a crash mid-write is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from service.tracking.ops import OPERATION, Operation
from trainers.logs import log


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, seq: int, op: Operation) -> None:
        """Durable before queued: a driver killed right after this replays the operation on the next open."""
        line = json.dumps({"seq": seq, "op": op.model_dump(mode="json")}) + "\n"
        with self.path.open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def pending(self, done_seq: int) -> list[tuple[int, Operation]]:
        """The operations asked for after `done_seq`, in order."""
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            try:
                entry = json.loads(line)
                seq, op = int(entry["seq"]), OPERATION.validate_python(entry["op"])
            except (ValueError, TypeError, KeyError, ValidationError):
                log.warning(
                    "tracking: %s line %d is not an operation (cut by a crash?): skipped", self.path, number
                )
                continue
            if seq > done_seq:
                entries.append((seq, op))
        return sorted(entries, key=lambda entry: entry[0])

    def clear(self) -> None:
        """Everything applied: the outbox starts over."""
        self.path.write_text("")
