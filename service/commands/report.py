"""`frost report NAME`: the sweep's answer to "frozen or fine-tuned, at which capacity" (service/report.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from service.commands.flags import ROOT_HELP


def cmd_report(args: argparse.Namespace) -> int:
    """md prints the finding then the path of report.md (last line); json one object."""
    from service.project import existing_project_root, find_sweep
    from service.report.write import report_sweep

    report, path = report_sweep(find_sweep(args.name, existing_project_root(args.root)))
    if args.format == "json":
        print(json.dumps(report.to_json()))
    else:
        print(report.finding)
        print(path)
    return 0


def add_report_parser(sub: Any) -> None:
    report = sub.add_parser("report", help="frozen vs fine-tuned: table, plots, finding (report.md)")
    report.add_argument("name")
    report.add_argument("--root", help=ROOT_HELP)
    report.add_argument(
        "--format", choices=("md", "json"), default="md", help="last stdout line: path or JSON"
    )
    report.set_defaults(func=cmd_report)
