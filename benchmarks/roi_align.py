"""Faster R-CNN's multi-scale RoIAlign on the CPU: torchvision's kernel vs frost's sparse matrix product.

One batch as a frost Faster R-CNN pools it in training (default: 8 images of 128 px, FPN levels at strides
8 / 16 / 32 with 64 channels, 64 sampled RoIs per image, 7 x 7 bins, sampling ratio 2), forward alone and
forward + backward, median of `--repeats` runs each, interleaved; the largest difference of the outputs and of
the feature gradients is printed beside the times.

    python benchmarks/roi_align.py [--images 8] [--size 128] [--channels 64] [--rois 64] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionPool

from trainers.roi_align import MultiScaleRoIAlign


def inputs(args: argparse.Namespace) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    maps = OrderedDict(
        (str(n), torch.randn(args.images, args.channels, args.size // s, args.size // s, generator=g))
        for n, s in enumerate((8, 16, 32))
    )
    boxes = []
    for _ in range(args.images):
        xy = torch.rand(args.rois, 2, generator=g) * args.size
        wh = torch.rand(args.rois, 2, generator=g) * args.size / 2
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=args.size)], 1))
    return maps, boxes


def timed(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rois", type=int, default=64, help="RoIs per image")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    maps, boxes = inputs(args)
    shapes = [(args.size, args.size)] * args.images
    names = list(maps)
    pools = {"torchvision": TorchvisionPool(names, 7, 2), "frost": MultiScaleRoIAlign(names, 7, 2)}
    grad = torch.randn(
        args.images * args.rois, args.channels, 7, 7, generator=torch.Generator().manual_seed(1)
    )

    results: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for name, pool in pools.items():
        leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
        out = pool(leaves, boxes, shapes)
        results[name] = (out.detach(), list(torch.autograd.grad(out, list(leaves.values()), grad)))
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "both": []} for name in pools}
    for _ in range(3):  # interleaved rounds, so a busy spell of the machine hits both alike
        for name, pool in pools.items():
            leaves = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())

            def forward(pool: torch.nn.Module = pool, leaves: OrderedDict = leaves) -> None:
                with torch.no_grad():
                    pool(leaves, boxes, shapes)

            def both(pool: torch.nn.Module = pool, leaves: OrderedDict = leaves) -> None:
                pool(leaves, boxes, shapes).backward(grad)

            times[name]["forward"].append(timed(forward, args.repeats))
            times[name]["both"].append(timed(both, args.repeats))

    (tv_out, tv_grads), (fr_out, fr_grads) = results["torchvision"], results["frost"]
    out_diff = (tv_out - fr_out).abs().max().item()
    grad_diff = max((a - b).abs().max().item() for a, b in zip(tv_grads, fr_grads))
    print(
        f"{args.images} images x {args.rois} RoIs, {args.size} px, {args.channels} channels, 3 levels, 7 x 7, "
        f"sampling 2, {torch.get_num_threads()} threads"
    )
    print(f"{'pool':<12} {'forward ms':>11} {'fwd+bwd ms':>11}")
    median = {n: {k: statistics.median(v) * 1e3 for k, v in t.items()} for n, t in times.items()}
    for name, row in median.items():
        print(f"{name:<12} {row['forward']:>11.2f} {row['both']:>11.2f}")
    print(
        f"frost / torchvision: forward {median['frost']['forward'] / median['torchvision']['forward']:.2f}, "
        f"forward + backward {median['frost']['both'] / median['torchvision']['both']:.2f}; "
        f"max |difference|: output {out_diff:.1e}, gradient {grad_diff:.1e}"
    )


if __name__ == "__main__":
    main()
