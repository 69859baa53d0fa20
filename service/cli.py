"""`frost`: the command line. Parses flags, turns user errors into one message and exit code 2.

Exit codes: 0 success, 1 a failure while working (training diverged, a sweep errored), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainers.errors import FrostError, TrainingError


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
        spec = SynthSpec.model_validate(apply_overrides({}, args.set))
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

    spec = load_trial_spec(args.trial, args.set)
    metrics = run_trial(spec, Path(args.out))
    print(json.dumps(metrics))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    print(f"{args.spec}: valid sweep '{spec.name}' ({spec.digest()})")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.spec import SweepSpec

    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from service.driver import run_sweep
    from sweeps.spec import load_sweep_spec

    spec = load_sweep_spec(args.spec, args.set)
    summary = run_sweep(spec, root=args.root, address=args.address, json_output=args.json)
    if args.json:
        print(json.dumps(summary))
    return 0 if summary.get("ok", True) else 1


def _cmd_resume(args: argparse.Namespace) -> int:
    from service.driver import project_root, run_sweep
    from service.status import SPEC_FILE, find_sweep
    from sweeps.spec import load_sweep_spec

    root = project_root(args.root)
    spec = load_sweep_spec(find_sweep(args.name, root) / SPEC_FILE)
    summary = run_sweep(spec, root=root, address=args.address, json_output=args.json)
    if args.json:
        print(json.dumps(summary))
    return 0 if summary.get("ok", True) else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from service.driver import project_root
    from service.status import SPEC_FILE, find_sweep, sweep_status
    from sweeps.space import ranking
    from sweeps.spec import load_sweep_spec

    directory = find_sweep(args.name, project_root(args.root))
    spec = load_sweep_spec(directory / SPEC_FILE)
    metric, mode = ranking(spec)
    status = sweep_status(directory, metric, mode, spec.trial_count(), list(spec.search))
    if args.json:
        print(json.dumps(status))
        return 0
    print(
        f"sweep {status['name']}: {status['state']} ({len(status['trials'])} of {spec.trial_count()} trials)"
    )
    for trial in status["trials"]:
        value = trial[metric]
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        print(
            f"  {trial['trial_id']}  {trial['state']:<11} {trial['fate'] or '':<11} epochs {trial['epochs']:>3}  {metric} {shown}"
        )
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from service.driver import project_root
    from service.status import list_sweeps

    for name in list_sweeps(project_root(args.root)):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="frost", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set", action="append", default=[], metavar="PATH=VALUE", help="dotted override, repeatable"
        )

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = data_sub.add_parser("synth", help="write the built-in long-tail COCO-format dataset")
    synth.add_argument("out_dir")
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
    overrides(train)
    train.set_defaults(func=_cmd_train)

    validate = sub.add_parser("validate", help="validate a sweep spec")
    validate.add_argument("spec")
    overrides(validate)
    validate.set_defaults(func=_cmd_validate)

    schema = sub.add_parser("schema", help="print the sweep spec's JSON Schema")
    schema.set_defaults(func=_cmd_schema)

    run = sub.add_parser("run", help="run a sweep (local Ray + SQLite MLflow unless told otherwise)")
    run.add_argument("spec")
    run.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    run.add_argument("--address", help="attach to an existing Ray cluster")
    run.add_argument("--json", action="store_true", help="last stdout line: a JSON summary")
    overrides(run)
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser("resume", help="resume an interrupted sweep (its saved spec) to the end")
    resume.add_argument("name")
    resume.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    resume.add_argument("--address", help="attach to an existing Ray cluster")
    resume.add_argument("--json", action="store_true", help="last stdout line: a JSON summary")
    resume.set_defaults(func=_cmd_resume)

    status = sub.add_parser("status", help="trials of a sweep by state, from its storage")
    status.add_argument("name")
    status.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_cmd_status)

    ls = sub.add_parser("ls", help="sweeps known in the project folder")
    ls.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    ls.set_defaults(func=_cmd_ls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
