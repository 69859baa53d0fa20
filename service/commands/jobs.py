"""`frost submit | logs | stop`: a sweep as a Ray Job on a cluster (service/cluster/jobs.py does the work)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.commands.flags import JOBS_ADDRESS_HELP, allow_large, flag, force, overrides


def cmd_submit(args: argparse.Namespace) -> int:
    from service.cluster.jobs import submit_sweep
    from service.tracking.uris import default_tracking_uri, mlflow_ui_command
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    spec.check_size(args.allow_large)
    if not args.root:
        print(
            "frost: no --root: the sweep's state goes to the head's $FROST_HOME, which must be set to shared "
            "storage there (else it lands in the job's temporary working directory)",
            file=sys.stderr,
        )
    result = submit_sweep(spec, args.address, root=args.root, force=args.force)
    if result["submitted"]:
        print(f"submitted sweep '{spec.name}' as Ray Job {result['submission_id']} ({result['status']})")
    else:
        print(
            f"sweep '{spec.name}' (same spec) is already job {result['submission_id']} ({result['status']}): "
            "nothing submitted"
        )
    print(f"  logs: frost logs {spec.name} --address {result['address']}")
    print(f"  stop: frost stop {spec.name} --address {result['address']}")
    experiment = spec.experiment_name
    if spec.tracking.uri or args.root:
        uri = spec.tracking.uri or default_tracking_uri(Path(args.root))
        where = "" if spec.tracking.uri else " (on the head)"
        print(f"  browse: {mlflow_ui_command(uri)}{where}  (experiment '{experiment}')")
    else:
        print(f"  browse: mlflow ui over <head's $FROST_HOME>/mlflow.db  (experiment '{experiment}')")
    if args.json:
        print(json.dumps({k: result[k] for k in ("name", "submission_id", "status", "address")}))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from service.cluster.jobs import follow_job_logs, job_logs

    if args.follow:

        def write(chunk: str) -> None:
            sys.stdout.write(chunk)
            sys.stdout.flush()

        status = follow_job_logs(args.name, args.address, write)
        print(f"frost: job of sweep '{args.name}' ended: {status}", file=sys.stderr)
        return 0
    _, logs = job_logs(args.name, args.address)
    sys.stdout.write(logs)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from service.cluster.jobs import stop_sweep_job

    result = stop_sweep_job(args.name, args.address)
    if args.json:
        print(json.dumps(result))
    elif result["stopped"]:
        print(f"stopped job {result['submission_id']} of sweep '{args.name}' ({result['status']})")
    else:
        print(f"job {result['submission_id']} of sweep '{args.name}' is not running ({result['status']})")
    return 0


def add_job_parsers(sub: Any) -> None:
    submit = sub.add_parser("submit", help="run a sweep on a Ray cluster as a Ray Job (idempotent per spec)")
    submit.add_argument("spec")
    submit.add_argument("--address", help=JOBS_ADDRESS_HELP)
    submit.add_argument("--root", help="project folder on the cluster (default: the head's $FROST_HOME)")
    flag(submit, "--json", "last stdout line: a JSON summary")
    force(submit)
    allow_large(submit)
    overrides(submit)
    submit.set_defaults(func=cmd_submit)

    logs = sub.add_parser("logs", help="the logs of a sweep's Ray Job")
    logs.add_argument("name")
    logs.add_argument("--address", help=JOBS_ADDRESS_HELP)
    logs.add_argument("-f", "--follow", action="store_true", help="stream the logs until the job ends")
    logs.set_defaults(func=cmd_logs)

    stop = sub.add_parser("stop", help="stop a sweep's Ray Job (resume it later with frost submit)")
    stop.add_argument("name")
    stop.add_argument("--address", help=JOBS_ADDRESS_HELP)
    flag(stop, "--json", "one JSON object")
    stop.set_defaults(func=cmd_stop)
