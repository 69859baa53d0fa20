"""frost's one logger, `logging.getLogger("frost")`: lines read `frost: message` on stderr.

It has its handler from the moment any frost module is imported, so a trainer inside a Ray worker, a test
calling a function directly and the command line all print the same way; the CLI only sets the level
(service/console.py: `--verbose` shows DEBUG).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("frost")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (tests, the CLI and a trial's log tee swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


if not any(isinstance(h, StderrHandler) for h in log.handlers):
    _handler = StderrHandler()
    _handler.setFormatter(logging.Formatter("frost: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
