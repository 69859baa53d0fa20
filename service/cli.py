"""`frost`: distributed sweeps of frozen vs fine-tuned detector backbones (Ray Tune, MLflow, torchvision).

Exit codes: 0 success, 1 a failure while working (training diverged, a sweep errored), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from service.commands.cache import add_cache_parser
from service.commands.flags import Parser
from service.commands.jobs import add_job_parsers
from service.commands.report import add_report_parser
from service.commands.sweep import add_sweep_parsers
from service.commands.trial import add_trial_parsers
from service.console import configure_logging
from trainers.errors import FrostError, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="frost", description=__doc__.splitlines()[0] if __doc__ else "frost")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_trial_parsers(sub)
    add_sweep_parsers(sub)
    add_report_parser(sub)
    add_job_parsers(sub)
    add_cache_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    if getattr(args, "starts_ray", False):  # before anything imports Ray (service/cluster/loopback.py)
        from service.cluster.loopback import keep_ray_on_loopback

        keep_ray_on_loopback(args.address)
    try:
        return args.func(args)
    except FrostError as exc:
        print(f"frost: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"frost: training failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("frost: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug of frost's, not the user's: one line here, the traceback in a file
        if os.environ.get("FROST_DEBUG") == "1":
            raise
        report = crash_report(traceback.format_exc())
        print(
            f"frost: internal error ({sys.exc_info()[0].__name__}); the traceback is in {report} "  # type: ignore[union-attr]
            "(FROST_DEBUG=1 prints it)",
            file=sys.stderr,
        )
        return 1


def crash_report(text: str) -> Path:
    """Write a traceback to a file of its own and return its path."""
    fd, name = tempfile.mkstemp(prefix=f"frost-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"frost {' '.join(sys.argv[1:])}\n{text}")
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
