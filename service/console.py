"""What a person reads: frost's one logger, configured once, and the summary printed at the end of a sweep.

Every frost line goes through `logging.getLogger("frost")` and reads `frost: message` on stderr. Ray's own
console output (Tune's status table, worker lines such as "Checkpoint successfully created") is not shown by
default: it goes to the sweep's log file (`sweeps/NAME/driver.log`) and `frost run --verbose` brings it back
(service/runtime.py decides where it goes).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from service.results import SweepSummary

log = logging.getLogger("frost")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (tests and the CLI swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(verbose: bool = False) -> None:
    """Idempotent: one stderr handler on the `frost` logger, `frost: ` prefixed; DEBUG with --verbose."""
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("frost: %(message)s"))
        log.addHandler(handler)
    log.propagate = False


def print_summary(summary: SweepSummary, browse: str) -> None:
    log.info("sweep '%s': %d trials", summary.name, len(summary.trials))
    for line in summary.trial_lines():
        log.info("%s", line)
    if summary.interrupted:
        log.info("interrupted: trials not finished are kept; continue with `frost resume %s`", summary.name)
    if summary.plot:
        log.info("plot: %s", summary.plot)
    best = summary.best_line()
    if best:
        log.info("best: %s", best)
    log.info("browse: %s  (experiment '%s')", browse, summary.experiment)
