"""`frost data synth | import | stats`, `frost pretrain`, `frost train`: one trial, or what one trial needs, without Ray."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.commands.flags import Parser, flag, overrides
from trainers.errors import FrostError
from trainers.files import writable_folder


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from trainers.config import SynthSpec, apply_overrides, format_validation_error
    from trainers.synth.dataset import write_detection_dataset

    try:
        fields = apply_overrides({}, args.set)
        if args.format:
            fields["format"] = args.format
        spec = SynthSpec.model_validate(fields)
    except ValidationError as exc:
        raise FrostError(format_validation_error(exc, prefix="synth.")) from None
    summary = write_detection_dataset(writable_folder(args.out_dir, "OUT_DIR"), spec)
    print(json.dumps(summary))
    return 0


def _print_stats(summary: dict[str, Any], as_json: bool) -> None:
    from trainers.importers.stats import stats_table

    print("\n".join(stats_table(summary)))
    if as_json:
        print(json.dumps(summary))


def cmd_data_import(args: argparse.Namespace) -> int:
    from trainers.importers import ImportOptions, import_dataset
    from trainers.importers.model import listing
    from trainers.logs import log

    options = ImportOptions(args.format, args.val_fraction, args.val_split, args.drop_invalid, args.seed)
    out = Path(args.out)
    summary, dropped = import_dataset(Path(args.src), out, options)
    if dropped:
        log.warning("dropped %d invalid record(s) (--drop-invalid):", len(dropped))
        for line in listing(dropped):
            log.warning("  %s", line)
    _print_stats(summary, args.json)
    if not args.json:
        print(f"wrote {out}: train with --set data.source=coco --set data.root={out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from trainers.importers.stats import coco_stats, read_dataset

    if args.rare_max < 0 or args.common_max < args.rare_max:
        raise FrostError(
            f"--rare-max / --common-max: need 0 <= rare <= common, got {args.rare_max}, {args.common_max}"
        )
    _print_stats(coco_stats(read_dataset(Path(args.dir)), args.rare_max, args.common_max), args.json)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from trainers.synth.pretrain import load_pretrain_spec, pretrain_classifier

    spec = load_pretrain_spec(args.backbone, args.set)
    out = None
    if args.out:  # a checkpoint file: its folder must be one frost can write
        out = Path(args.out)
        if out.is_dir():
            raise FrostError(f"--out: {out} is a folder; give the checkpoint's file path")
        writable_folder(out.parent, "--out")
    path = pretrain_classifier(spec, out)
    print(json.dumps({"checkpoint": str(path)}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.config import load_trial_spec
    from trainers.train import run_trial

    if args.workers < 1:
        raise FrostError(f"--workers: must be at least 1, got {args.workers}")
    spec = load_trial_spec(args.trial, args.set)
    out = writable_folder(args.out, "--out")  # after the flags and the spec: bad input creates nothing
    if args.workers == 1:
        metrics = run_trial(spec, out)
    else:
        from service.workers.train_workers import launch_workers

        metrics = launch_workers(spec, args.trial, args.set, out, args.workers)
    print(json.dumps(metrics))
    return 0


def add_trial_parsers(sub: Any) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    synth = data_sub.add_parser("synth", help="write the built-in long-tail dataset (COCO or LVIS format)")
    synth.add_argument("out_dir")
    synth.add_argument(
        "--format",
        choices=("coco", "lvis"),
        help="lvis: the same images plus LVIS's per-image neg_category_ids / not_exhaustive_category_ids "
        "(default: coco, or the format given with --set)",
    )
    overrides(synth)
    synth.set_defaults(func=cmd_data_synth)

    imp = data_sub.add_parser(
        "import", help="VOC, YOLO or COCO -> a checked frost dataset (OUT/annotations, OUT/images)"
    )
    imp.add_argument("src", help="the source dataset folder (COCO: also one annotation file)")
    imp.add_argument("out", help="a new or empty folder; written all at once, or not at all")
    imp.add_argument("--format", required=True, choices=("voc", "yolo", "coco"))
    imp.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="for a source without a val split: this share of images to val, stratified by class (default 0.2)",
    )
    imp.add_argument("--val-split", help="the one source split (VOC list, YOLO split, COCO file) that is val")
    flag(imp, "--drop-invalid", "leave invalid records out (and say how many) instead of refusing the import")
    imp.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    flag(imp, "--json", "last stdout line: the dataset's counts as JSON")
    imp.set_defaults(func=cmd_data_import)

    stats = data_sub.add_parser("stats", help="per-class image and box counts, rare/common/frequent buckets")
    stats.add_argument("dir", help="a COCO or LVIS dataset folder (annotations/train.json, val.json)")
    stats.add_argument("--rare-max", type=int, default=10, help="rare: in at most this many train images")
    stats.add_argument(
        "--common-max", type=int, default=100, help="common: at most this many; frequent above"
    )
    flag(stats, "--json", "last stdout line: the counts as JSON")
    stats.set_defaults(func=cmd_data_stats)

    pretrain = sub.add_parser("pretrain", help="pretrain a backbone as a classifier on synthetic crops")
    pretrain.add_argument("--backbone", default="resnet18")
    pretrain.add_argument("--out", help="checkpoint path (default: the builtin weights cache)")
    overrides(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)

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
    train.set_defaults(func=cmd_train)
