"""`frost run --profile-startup`: wall-clock marks of one sweep, from the process's start to its end.

Where a sweep's fixed cost goes (imports, spec, data and weights, Ray, Tune, the first trial's process and
epoch, tracking, plots, the report, shutdown): each `mark` records the time since the process started (read
from /proc, so the interpreter's start and the imports before `main` count too). Off unless enabled: a mark
then costs one function call. benchmarks/service_overhead.py prints the same timeline; docs/stack.md keeps
the figures.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_marks: list[tuple[str, float]] = []
_enabled = False


def process_start() -> float:
    """The process's start, in seconds since the epoch (Linux /proc; now where /proc is missing)."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


_START = process_start()


def enable() -> None:
    global _enabled
    _enabled = True
    mark("main: imports done, flags parsed")


def enabled() -> bool:
    return _enabled


def mark(what: str) -> None:
    if _enabled:
        _marks.append((what, time.time() - _START))


def marks() -> list[tuple[str, float]]:
    return list(_marks)


def print_timeline(stream: TextIO | None = None) -> None:
    """One line per mark: seconds since the process started, and since the mark before."""
    stream = stream or sys.stderr
    print("frost: startup profile (s since the process started, + since the mark before)", file=stream)
    previous = 0.0
    for what, at in _marks:
        print(f"frost:   {at:8.2f}  +{at - previous:6.2f}  {what}", file=stream)
        previous = at
