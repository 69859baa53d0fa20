"""What a person reads: frost's one logger, configured once, and the summary printed at the end of a sweep.

Every frost line goes through `logging.getLogger("frost")` and reads `frost: message` on stderr. Ray's own
console output (Tune's status table, worker lines such as "Checkpoint successfully created") is not shown by
default: it goes to the sweep's log file (`sweeps/NAME/driver.log`) and `frost run --verbose` brings it back
(service/cluster/runtime.py decides where it goes).
"""

from __future__ import annotations

import logging

from service.results import SweepSummary
from trainers.logs import log


def configure_logging(verbose: bool = False) -> None:
    """The CLI's one call: DEBUG lines too with --verbose (the handler is trainers/logs.py's)."""
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


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
