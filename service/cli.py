"""`frost`: the command line. Parses flags, turns user errors into one message and exit code 2.

Exit codes: 0 success, 1 a failure while working (training diverged, a sweep errored), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli_flags import ROOT_HELP, allow_large, driver_flags, flag, force, overrides
from service.console import configure_logging
from trainers.errors import FrostError, TrainingError

if TYPE_CHECKING:
    from service.results import SweepSummary
    from sweeps.spec import SweepSpec


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad flags already; keep its message short and on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"frost: error: {message}\n")


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from trainers.config import SynthSpec, apply_overrides, format_validation_error
    from trainers.synth import write_detection_dataset

    try:
        fields = apply_overrides({}, args.set)
        if args.format:
            fields["format"] = args.format
        spec = SynthSpec.model_validate(fields)
    except ValidationError as exc:
        raise FrostError(format_validation_error(exc, prefix="synth.")) from None
    summary = write_detection_dataset(Path(args.out_dir), spec)
    print(json.dumps(summary))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from trainers.pretrain import load_pretrain_spec, pretrain_classifier

    spec = load_pretrain_spec(args.backbone, args.set)
    path = pretrain_classifier(spec, Path(args.out) if args.out else None)
    print(json.dumps({"checkpoint": str(path)}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from trainers.config import load_trial_spec
    from trainers.train import run_trial

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FrostError(f"--out: {out} is a file; a trial writes a folder")
    if args.workers < 1:
        raise FrostError(f"--workers: must be at least 1, got {args.workers}")
    spec = load_trial_spec(args.trial, args.set)
    if args.workers == 1:
        metrics = run_trial(spec, out)
    else:
        from service.train_workers import launch_workers

        metrics = launch_workers(spec, args.trial, args.set, out, args.workers)
    print(json.dumps(metrics))
    return 0


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


def _cmd_validate(args: argparse.Namespace) -> int:
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    _check_spec(spec, args.allow_large)
    if args.address:
        _print_cluster_fit(spec, args.address, args.root)
    print(f"{args.spec}: valid sweep '{spec.name}' ({spec.digest()})")
    return 0


def _print_cluster_fit(spec: SweepSpec, address: str, root: str | None) -> None:
    """One trial must fit the cluster at `address` (exit 2 otherwise); how many run at once."""
    from service.project import project_root
    from service.runtime import check_cluster, cluster_fit, cluster_nodes, ray_session
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


def _cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.spec import SweepSpec

    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from service.driver import run_sweep
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    _check_spec(spec, args.allow_large)
    report = not args.no_report
    summary = run_sweep(spec, args.root, args.address, args.force, args.verbose, report)
    if args.json:
        print(json.dumps(summary.to_json()))
    return _sweep_exit_code(summary)


def _sweep_exit_code(summary: SweepSummary) -> int:
    """0 all trials ended well, 1 a trial errored, 130 the sweep was stopped before its end (resume it)."""
    if summary.interrupted:
        return 130
    return 0 if summary.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from service.report import report_command

    return report_command(args.name, args.root, args.format)


def _cmd_resume(args: argparse.Namespace) -> int:
    from service.driver import run_sweep
    from service.project import SPEC_FILE, find_sweep, project_root
    from sweeps.spec import load_sweep_spec

    root = project_root(args.root)
    spec = load_sweep_spec(find_sweep(args.name, root) / SPEC_FILE)
    summary = run_sweep(spec, root=root, address=args.address, verbose=args.verbose)
    if args.json:
        print(json.dumps(summary.to_json()))
    return _sweep_exit_code(summary)


def _cmd_status(args: argparse.Namespace) -> int:
    from service.project import SPEC_FILE, find_sweep, project_root
    from service.status import sweep_status
    from sweeps.spec import load_sweep_spec

    job = None
    if args.address:
        from service.jobs import job_state

        job = job_state(args.name, args.address)
    try:
        directory = find_sweep(args.name, project_root(args.root))
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


def _cmd_ls(args: argparse.Namespace) -> int:
    from service.project import list_sweeps, project_root

    for name in list_sweeps(project_root(args.root)):
        print(name)
    return 0


def _trial_commands(sub: Any) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = data_sub.add_parser("synth", help="write the built-in long-tail dataset (COCO or LVIS format)")
    synth.add_argument("out_dir")
    synth.add_argument(
        "--format",
        choices=("coco", "lvis"),
        help="lvis: the same images plus LVIS's per-image neg_category_ids / not_exhaustive_category_ids "
        "(default: coco, or the format given with --set)",
    )
    overrides(synth)
    synth.set_defaults(func=_cmd_data_synth)

    pretrain = sub.add_parser("pretrain", help="pretrain a backbone as a classifier on synthetic crops")
    pretrain.add_argument("--backbone", default="resnet18")
    pretrain.add_argument("--out", help="checkpoint path (default: the builtin weights cache)")
    overrides(pretrain)
    pretrain.set_defaults(func=_cmd_pretrain)

    train = sub.add_parser("train", help="train and evaluate one trial")
    train.add_argument("trial", nargs="?", help="TrialSpec YAML (default: the CPU-sized default trial)")
    train.add_argument("--out", required=True, help="trial directory (resumes from its newest checkpoint)")
    train.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-parallel worker processes on this machine (train.batch_size is the global batch; "
        "docs/distributed.md)",
    )
    overrides(train)
    train.set_defaults(func=_cmd_train)


def _sweep_commands(sub: Any) -> None:
    validate = sub.add_parser("validate", help="validate a sweep spec")
    validate.add_argument("spec")
    validate.add_argument("--address", help="also check that a trial fits this Ray cluster (GCS HOST:PORT)")
    validate.add_argument("--root", help=ROOT_HELP + "; its Ray token is used for --address")
    allow_large(validate)
    overrides(validate)
    validate.set_defaults(func=_cmd_validate)

    schema = sub.add_parser("schema", help="print the sweep spec's JSON Schema")
    schema.set_defaults(func=_cmd_schema)

    run = sub.add_parser("run", help="run a sweep (local Ray + SQLite MLflow unless told otherwise)")
    run.add_argument("spec")
    driver_flags(run)
    force(run)
    allow_large(run)
    flag(run, "--no-report", "skip the report at the end (frost report NAME)")
    overrides(run)
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="frozen vs fine-tuned: table, plots, finding (report.md)")
    report.add_argument("name")
    report.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    report.add_argument(
        "--format", choices=("md", "json"), default="md", help="last stdout line: path or JSON"
    )
    report.set_defaults(func=_cmd_report)

    resume = sub.add_parser("resume", help="resume an interrupted sweep (its saved spec) to the end")
    resume.add_argument("name")
    driver_flags(resume)
    resume.set_defaults(func=_cmd_resume)

    status = sub.add_parser("status", help="trials of a sweep by state, from its storage")
    status.add_argument("name")
    status.add_argument("--root", help=ROOT_HELP)
    flag(status, "--json", "one JSON object")
    flag(status, "--plot", "(re)draw the sweep's plot, sweep.png, beside it")
    status.add_argument("--address", help="also the state of its Ray Job at this Jobs API (http://HEAD:8265)")
    status.set_defaults(func=_cmd_status)

    ls = sub.add_parser("ls", help="sweeps known in the project folder")
    ls.add_argument("--root", help=ROOT_HELP)
    ls.set_defaults(func=_cmd_ls)


def build_parser() -> argparse.ArgumentParser:
    from service.cache_cmd import add_cache_parser
    from service.jobs_cmd import add_job_parsers

    parser = _Parser(prog="frost", description=__doc__.splitlines()[0] if __doc__ else "frost")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _trial_commands(sub)
    _sweep_commands(sub)
    add_job_parsers(sub)
    add_cache_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    if args.func in (_cmd_run, _cmd_resume, _cmd_validate):
        from service.loopback import keep_ray_on_loopback

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
