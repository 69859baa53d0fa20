"""Frozen-feature cache: step time of frozen cached / frozen uncached / fine-tuned, and a sweep of frozen trials.

Part 1, per backbone (ResNet-18 and ResNet-50 FPN Faster R-CNN, 128 px, batch 8, CPU): one short trial per mode,
`step_time_s` of its last epoch (training steps only; a cached trial builds its cache before its first step,
timed apart; the first epoch's first steps pay one-time allocations, so `--epochs 2` measures the second). A
throw-away trial first warms the process up (kernels, allocator) so the first mode measured is not penalised.
Part 2, per backbone: a sweep of 4 frozen trials of one cache key (different heads), with and without the
cache, run as frost runs a sweep on this machine: `--concurrent` trial actors (default 2), each a process with
cores / concurrent threads, as a Ray trial actor of `resources.cpus: 1` has (OMP_NUM_THREADS=1), that runs one
trial after another (Tune's `reuse_actors`: only a worker's first trial pays the imports; the output shows this
"worker start" apart, included in the walls); the Ray and MLflow overhead of a real sweep is measured apart
(benchmarks/service_overhead.py). The cached sweep's wall time includes building the cache: the trials that
start together build different shards of it at once. Part 1 runs in-process (`run_trial`) with every core.
All on a private FROST_HOME, so the cache starts empty; `backbone.weights=none` (weights do not change speed).
Targets (issue 12): cached / fine-tuned step <= 0.40 (R18) and <= 0.30 (R50); cached / uncached sweep wall
<= 0.5.

    python benchmarks/feature_cache.py [--images 128] [--epochs 2] [--sweep-epochs 6] [--concurrent 2]
                                      [--sweep-repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def overrides(args: argparse.Namespace, *more: str) -> list[str]:
    return [
        "backbone.weights=none",
        "detector=faster_rcnn",
        "input.image_size=128",
        "data.synth.image_size=128",
        f"data.synth.train_images={args.images}",
        "data.synth.val_images=16",
        "train.batch_size=8",
        "train.device=cpu",
        "eval.every=100",
        *more,
    ]


def trial_spec(args: argparse.Namespace, *more: str) -> Any:
    from trainers.config import load_trial_spec

    return load_trial_spec(None, overrides(args, *more))


def run(spec: Any, out: Path) -> dict[str, Any]:
    from trainers.train import run_trial

    return run_trial(spec, out)


def step_times(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    print("warm-up trial ...", file=sys.stderr, flush=True)
    warm = argparse.Namespace(**{**vars(args), "images": 16})
    run(trial_spec(warm, "backbone.freeze=finetune", "train.epochs=1"), tmp / "warm-up")
    rows: dict[str, dict[str, float]] = {}
    for backbone in BACKBONES:
        common = (f"backbone.name={backbone}", f"train.epochs={args.epochs}")
        modes = {
            "finetune": ("backbone.freeze=finetune",),
            "frozen": ("backbone.freeze=frozen", "cache.features=false"),
            "frozen+cache": ("backbone.freeze=frozen",),
        }
        for mode, overrides in modes.items():
            print(f"{backbone} {mode} ...", file=sys.stderr, flush=True)
            result = run(trial_spec(args, *common, *overrides), tmp / f"{backbone}-{mode}")
            rows[f"{backbone} {mode}"] = {
                "step": result["step_time_s"],
                "epoch": result["epoch_time_s"],
                "build": result["cache_build_s"],
                "bytes": result["cache_bytes"],
            }
    return rows


BACKBONES = ("resnet18", "resnet50")
SWEEP = ("heads.box_fc=64", "heads.box_fc=128", "neck.extra_blocks=1", "heads.rpn_convs=2")


def _worker_start(threads: int) -> None:
    """A sweep worker: `threads` threads once torch is imported (a Ray trial actor of `resources.cpus: 1` has
    OMP_NUM_THREADS=1), its frost log lines off the benchmark's output."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the worker's whole life


def worker_threads(args: argparse.Namespace) -> int:
    return max(1, (os.cpu_count() or 1) // args.concurrent)


def worker_pool(args: argparse.Namespace) -> Any:
    """`--concurrent` fresh worker processes sharing the cores: what a sweep's trial actors are."""
    return multiprocessing.get_context("spawn").Pool(
        args.concurrent, initializer=_worker_start, initargs=(worker_threads(args),)
    )


def _worker_trial(job: tuple[list[str], str]) -> dict[str, Any]:
    items, out = job
    from trainers.config import load_trial_spec
    from trainers.train import run_trial

    return run_trial(load_trial_spec(None, items), Path(out))


def _imports(_: int) -> float:
    start = time.perf_counter()
    import trainers.train  # noqa: F401

    return time.perf_counter() - start


def worker_start(args: argparse.Namespace) -> dict[str, float]:
    """What a sweep worker pays once: the pool's start to its workers' imports done, and the imports alone."""
    start = time.perf_counter()
    with worker_pool(args) as pool:
        imports = pool.map(_imports, range(args.concurrent), chunksize=1)
    return {"wall": time.perf_counter() - start, "imports": max(imports)}


def sweep(args: argparse.Namespace, tmp: Path, backbone: str, cached: bool, repeat: int) -> dict[str, float]:
    """The SWEEP trials as a frost sweep runs them on this machine: `--concurrent` trial actors, each a fresh
    process with cores / concurrent threads that runs one trial after another (Tune reuses a finished trial's
    actor for the next pending one: `reuse_actors`), so only a worker's first trial pays the imports."""
    from trainers.features import cache_root

    shutil.rmtree(cache_root(), ignore_errors=True)  # part 1 built this key already: the sweep builds its own
    name = f"{backbone} sweep {'cached' if cached else 'uncached'}"
    jobs = []
    for n, override in enumerate(SWEEP):
        more = (override, f"backbone.name={backbone}", f"train.epochs={args.sweep_epochs}")
        # a fresh trial directory per repeat: an old one would resume
        jobs.append(
            (overrides(args, *more, f"cache.features={cached}"), str(tmp / f"sweep-{name}-{repeat}-{n}"))
        )
    print(f"{name} ({len(jobs)} trials) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with worker_pool(args) as pool:
        results = pool.map(_worker_trial, jobs, chunksize=1)
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "build": sum(r["cache_build_s"] for r in results),
        "bytes": sum(r["cache_bytes"] for r in results),
        "epoch": sum(r["epoch_time_s"] for r in results) / len(results),
    }


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median wall time (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["wall"])[(len(runs) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="training images per epoch")
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs of each step-time trial (the last is timed)"
    )
    parser.add_argument("--sweep-epochs", type=int, default=6, help="epochs of each sweep trial")
    parser.add_argument("--concurrent", type=int, default=2, help="sweep trials at a time")
    parser.add_argument("--sweep-repeats", type=int, default=3, help="sweeps per backbone and mode (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["FROST_HOME"] = str(tmp / "home")
        os.environ["FROST_OFFLINE"] = "1"
        start = time.perf_counter()
        rows = step_times(args, tmp)
        runs: dict[str, tuple[list, list]] = {bb: ([], []) for bb in BACKBONES}
        for repeat in range(args.sweep_repeats):  # alternating: a busy spell of the machine hits both alike
            for bb in BACKBONES:
                runs[bb][0].append(sweep(args, tmp, bb, False, repeat))
                runs[bb][1].append(sweep(args, tmp, bb, True, repeat))
        sweeps = {bb: (median_run(uncached), median_run(cached)) for bb, (uncached, cached) in runs.items()}
        started = worker_start(args)
        total = time.perf_counter() - start

    print(f"\nFaster R-CNN FPN, 128 px, batch 8, CPU, {args.images} train images x {args.epochs} epoch(s)")
    print(
        f"{'backbone / mode':<24} {'step s':>8} {'epoch s':>8} {'build s':>8} {'cache MiB':>10} {'step/ft':>8}"
    )
    for name, row in rows.items():
        base = rows[name.split()[0] + " finetune"]["step"]
        print(
            f"{name:<24} {row['step']:>8.3f} {row['epoch']:>8.2f} {row['build']:>8.2f} "
            f"{row['bytes'] / 2**20:>10.2f} {row['step'] / base:>8.2f}"
        )
    threads = worker_threads(args)
    print(
        f"\nsweep of {len(SWEEP)} frozen trials x {args.sweep_epochs} epochs, {args.concurrent} at a time, "
        f"{threads} thread(s) each, reused, median of {args.sweep_repeats} (epoch s: a trial's mean)"
    )
    print(
        f"{'sweep':<20} {'wall s':>8} {'epoch s':>8} {'build s':>8} {'cache MiB':>10} {'wall/uncached':>14}"
    )
    for backbone, (uncached, cached) in sweeps.items():
        for name, row in (("uncached", uncached), ("cached", cached)):
            print(
                f"{backbone + ' ' + name:<20} {row['wall']:>8.1f} {row['epoch']:>8.2f} {row['build']:>8.2f} "
                f"{row['bytes'] / 2**20:>10.2f} {row['wall'] / uncached['wall']:>14.2f}"
            )

    print(
        f"worker start (in each sweep's wall): {started['wall']:.1f} s from the pool's start to its workers' "
        f"imports done, of which imports {started['imports']:.1f} s"
    )

    def verdict(value: float, target: float) -> str:
        return f"{value:.2f} (<= {target:.2f}: {'met' if value <= target else 'NOT met'})"

    step = {bb: rows[f"{bb} frozen+cache"]["step"] / rows[f"{bb} finetune"]["step"] for bb in BACKBONES}
    wall = {bb: cached["wall"] / uncached["wall"] for bb, (uncached, cached) in sweeps.items()}
    print(
        f"\ntargets: cached/fine-tuned step R18 {verdict(step['resnet18'], 0.40)}, "
        f"R50 {verdict(step['resnet50'], 0.30)}; sweep cached/uncached R18 {verdict(wall['resnet18'], 0.5)}, "
        f"R50 {verdict(wall['resnet50'], 0.5)}; benchmark {total:.0f} s"
    )


if __name__ == "__main__":
    main()
