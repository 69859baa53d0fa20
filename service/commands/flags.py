"""The parser class and the flags several `frost` commands share."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad flags already; keep its message short and on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"frost: error: {message}\n")


ROOT_HELP = "project folder (default $FROST_HOME or ./frost-runs)"
JOBS_ADDRESS_HELP = "the head's Ray Jobs API, http://HEAD:8265 (default $RAY_API_SERVER_ADDRESS)"


def overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="dotted override, repeatable"
    )


def flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(name, action="store_true", help=help)


def driver_flags(p: argparse.ArgumentParser) -> None:
    """What `frost run` and `frost resume` share."""
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--address", help="attach to an existing Ray cluster (GCS HOST:PORT)")
    flag(p, "--json", "last stdout line: a JSON summary")
    flag(p, "--verbose", "also Ray's own output (Tune's table, worker logs)")


def force(p: argparse.ArgumentParser) -> None:
    flag(p, "--force", "a changed spec under an existing name: keep the old sweep aside and start afresh")


def allow_large(p: argparse.ArgumentParser) -> None:
    flag(p, "--allow-large", "run a sweep above the trial-count limit (sweeps/model.py MAX_TRIALS)")
