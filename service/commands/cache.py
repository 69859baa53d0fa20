"""`frost cache ls | du | clear [--root DIR]`: show and free the frozen-feature cache (docs/feature-cache.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _root(args: argparse.Namespace) -> Path:
    from service.project import existing_project_root
    from trainers.features import cache_root  # torch: only for `frost cache`, not every command

    # The same checks as `frost ls` / `status`: a mistyped --root is an error, not "nothing cached".
    return cache_root(existing_project_root(args.root))


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def cmd_cache(args: argparse.Namespace) -> int:
    from trainers.feature_store import clear_cache, list_cache

    root = _root(args)
    rows = list_cache(root)
    if args.cache_command == "ls":
        for row in rows:
            print(
                f"{row['key']}  {row['backbone']} {row['norm']} cut={row['cut']} {row['dtype']}  "
                f"{len(row['shards'])} shard(s)  {_mib(row['bytes'])}"
            )
        if not rows:
            print(f"no cached features under {root}")
    elif args.cache_command == "du":
        print(f"{_mib(sum(row['bytes'] for row in rows))} in {len(rows)} key(s) under {root}")
    else:
        freed, busy = clear_cache(root)
        print(f"freed {_mib(freed)} under {root}")
        for key, why in busy:
            print(f"kept {key}: {why}")
    return 0


def add_cache_parser(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="the frozen-feature cache: ls | du | clear")
    cache.add_argument("cache_command", choices=("ls", "du", "clear"))
    cache.add_argument("--root", help="project folder (default $FROST_HOME or ./frost-runs)")
    cache.set_defaults(func=cmd_cache)
