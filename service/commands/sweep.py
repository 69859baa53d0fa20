"""`frost validate | schema | run | resume | status | ls`: a sweep from its spec to its folder."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from service.commands.flags import ROOT_HELP, allow_large, driver_flags, flag, force, overrides
from trainers.errors import FrostError

if TYPE_CHECKING:
    from service.results import SweepSummary
    from sweeps.spec import SweepSpec


def _check_spec(spec: SweepSpec, allow_large: bool) -> None:
    """What validation alone cannot say: the sweep's size, copies counted as seeds; then the warnings."""
    from sweeps.model import check_repeats

    spec.check_size(allow_large)
    check_repeats(spec)
    _print_warnings(spec)


def _print_warnings(spec: SweepSpec) -> None:
    """Valid but likely unintended (one line each, on stderr; the exit code is unchanged)."""
    from sweeps.spec import spec_warnings

    for warning in spec_warnings(spec):
        print(f"frost: warning: {warning}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    _check_spec(spec, args.allow_large)
    if args.address:
        _print_cluster_fit(spec, args.address, args.root)
    print(f"{args.spec}: valid sweep '{spec.name}' ({spec.digest()})")
    return 0


def _print_cluster_fit(spec: SweepSpec, address: str, root: str | None) -> None:
    """One trial must fit the cluster at `address` (exit 2 otherwise); how many run at once."""
    from service.cluster.runtime import check_cluster, cluster_fit, cluster_nodes, ray_session
    from service.project import project_root
    from sweeps.space import describe_trial_needs

    check_cluster(address)
    with ray_session(address, project_root(root)):
        fits, why = cluster_fit(spec)
        nodes = len(cluster_nodes())
    if not fits:
        raise FrostError(why)
    at_once = min(fits, spec.max_concurrent_trials or fits)
    needs = describe_trial_needs(spec)
    print(f"cluster {address}: {nodes} node(s); a trial needs {needs}; {at_once} trial(s) at once")


def cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.spec import SweepSpec

    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from service import timeline

    if args.profile_startup:
        timeline.enable()
    from service.driver import run_sweep
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    _check_spec(spec, args.allow_large)
    timeline.mark("spec loaded and checked (driver imported)")
    report = not args.no_report
    summary = run_sweep(spec, args.root, args.address, args.force, args.verbose, report)
    if args.json:
        print(json.dumps(summary.to_json()))
    if args.profile_startup:
        timeline.mark("done")
        timeline.print_timeline()
    return _sweep_exit_code(summary)


def _sweep_exit_code(summary: SweepSummary) -> int:
    """0 all trials ended well, 1 a trial errored, 130 the sweep was stopped before its end (resume it)."""
    if summary.interrupted:
        return 130
    return 0 if summary.ok else 1


def cmd_resume(args: argparse.Namespace) -> int:
    from service.driver import run_sweep
    from service.project import find_sweep, project_root
    from service.sweep_folder import SPEC_FILE
    from sweeps.spec import load_sweep_spec

    root = project_root(args.root)
    spec = load_sweep_spec(find_sweep(args.name, root) / SPEC_FILE)
    summary = run_sweep(spec, root=root, address=args.address, verbose=args.verbose)
    if args.json:
        print(json.dumps(summary.to_json()))
    return _sweep_exit_code(summary)


def cmd_status(args: argparse.Namespace) -> int:
    from service.project import existing_project_root, find_sweep
    from service.status import sweep_status
    from service.sweep_folder import SPEC_FILE
    from sweeps.spec import load_sweep_spec

    job = None
    if args.address:
        from service.cluster.jobs import job_state

        job = job_state(args.name, args.address)
    try:
        directory = find_sweep(args.name, existing_project_root(args.root))
    except FrostError:
        if not job:
            raise
        # Submitted to a cluster whose storage this machine does not see: the job's state is what is known.
        if args.json:
            print(json.dumps({"name": args.name, "state": "UNKNOWN", "trials": [], "job": job}))
        else:
            print(
                f"sweep {args.name}: job {job['submission_id']} {job['status']} (its storage is not visible here)"
            )
        return 0
    spec = load_sweep_spec(directory / SPEC_FILE)
    status = sweep_status(directory, spec)
    status.job = job
    if args.plot:
        from service.plots import plot_sweep

        plot = plot_sweep(directory, status.metric, status.mode, spec.searched_paths)
        status.plot = str(plot) if plot else None
        print(f"plot: {plot}" if plot else "plot: no trial has reported an epoch yet", file=sys.stderr)
    if args.json:
        print(json.dumps(status.to_json()))
        return 0
    print(f"sweep {status.name}: {status.state} ({len(status.trials)} of {spec.trial_count()} trials)")
    if job:
        print(f"  job {job['submission_id']}: {job['status']}")
    for line in status.trial_lines():
        print(line)
    best = status.best_line()
    if best:
        print(f"best so far: {best}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from service.project import existing_project_root, list_sweeps

    for name in list_sweeps(existing_project_root(args.root)):
        print(name)
    return 0


def add_sweep_parsers(sub: Any) -> None:
    validate = sub.add_parser("validate", help="validate a sweep spec")
    validate.add_argument("spec")
    validate.add_argument("--address", help="also check that a trial fits this Ray cluster (GCS HOST:PORT)")
    validate.add_argument("--root", help=ROOT_HELP + "; its Ray token is used for --address")
    allow_large(validate)
    overrides(validate)
    validate.set_defaults(func=cmd_validate, starts_ray=True)

    schema = sub.add_parser("schema", help="print the sweep spec's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    run = sub.add_parser("run", help="run a sweep (local Ray + SQLite MLflow unless told otherwise)")
    run.add_argument("spec")
    driver_flags(run)
    force(run)
    allow_large(run)
    flag(run, "--no-report", "skip the report at the end (frost report NAME)")
    flag(run, "--profile-startup", "print where the sweep's wall time went (stderr): imports, Ray, Tune, ...")
    overrides(run)
    run.set_defaults(func=cmd_run, starts_ray=True)

    resume = sub.add_parser("resume", help="resume an interrupted sweep (its saved spec) to the end")
    resume.add_argument("name")
    driver_flags(resume)
    resume.set_defaults(func=cmd_resume, starts_ray=True)

    status = sub.add_parser("status", help="trials of a sweep by state, from its storage")
    status.add_argument("name")
    status.add_argument("--root", help=ROOT_HELP)
    flag(status, "--json", "one JSON object")
    flag(status, "--plot", "(re)draw the sweep's plot, sweep.png, beside it")
    status.add_argument("--address", help="also the state of its Ray Job at this Jobs API (http://HEAD:8265)")
    status.set_defaults(func=cmd_status)

    ls = sub.add_parser("ls", help="sweeps known in the project folder")
    ls.add_argument("--root", help=ROOT_HELP)
    ls.set_defaults(func=cmd_ls)
