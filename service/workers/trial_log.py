"""A trial's stderr, also appended to its folder's `trial.log`: Ray's worker output is off the console, so a
trial's own lines must land where `frost status` and a person look (sweeps/NAME/trials/<id>/trial.log)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee:
    """Writes to every stream it holds."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def trial_log(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "trial.log").open("a") as fh, contextlib.redirect_stderr(_Tee(sys.stderr, fh)):
        yield
