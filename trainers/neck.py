"""The neck: FPN (+ extra levels) followed by repeated top-down + bottom-up aggregation blocks."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork
from torchvision.ops.misc import Conv2dNormActivation

NormFactory = Callable[[int], nn.Module]


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups where the width allows it (the usual GN setting), else the largest divisor of 32 that fits.
    return nn.GroupNorm(math.gcd(32, channels), channels)


def norm_factory(kind: str) -> NormFactory | None:
    """none / gn / bn → a `channels -> module` factory (None = no norm, convs keep their bias)."""
    return {"none": None, "gn": _group_norm, "bn": nn.BatchNorm2d}[kind]


# ---------------------------------------------------------------------------------------------- neck
class AggregationBlock(nn.Module):
    """One PANet-style top-down + bottom-up pass over the pyramid, added residually ("deeper neck").

    Per level pair: a 3x3 top-down conv, a 3x3 stride-2 downsampling conv and a 3x3 bottom-up conv, i.e.
    3 * (levels - 1) convs of C→C. Levels and channel count are preserved.
    """

    def __init__(self, levels: int, channels: int, norm: NormFactory | None) -> None:
        super().__init__()

        def conv(stride: int = 1) -> Conv2dNormActivation:
            return Conv2dNormActivation(channels, channels, 3, stride, norm_layer=norm)

        self.top_down = nn.ModuleList([conv() for _ in range(levels - 1)])
        self.downsample = nn.ModuleList([conv(2) for _ in range(levels - 1)])
        self.bottom_up = nn.ModuleList([conv() for _ in range(levels - 1)])

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names, x = list(features), list(features.values())
        top = [x[-1]]
        for i in range(len(x) - 2, -1, -1):
            upper = F.interpolate(top[0], size=x[i].shape[-2:], mode="nearest")
            top.insert(0, self.top_down[i](x[i] + upper))
        out = [top[0]]
        for i in range(1, len(x)):
            lower = self.downsample[i - 1](out[-1])
            if lower.shape[-2:] != top[i].shape[-2:]:  # odd sizes: pooled levels round differently
                lower = F.interpolate(lower, size=top[i].shape[-2:], mode="nearest")
            out.append(self.bottom_up[i - 1](top[i] + lower))
        return OrderedDict((name, xi + oi) for name, xi, oi in zip(names, x, out))


class FrostNeck(nn.Module):
    """FPN (+ P6 / P6-P7 extra levels) followed by `extra_blocks` aggregation blocks."""

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        extra_levels: ExtraFPNBlock,
        num_levels: int,
        norm: NormFactory | None,
        blocks: int,
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=extra_levels, norm_layer=norm)
        self.blocks = nn.ModuleList([AggregationBlock(num_levels, channels, norm) for _ in range(blocks)])

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        pyramid = self.fpn(features)
        for block in self.blocks:
            pyramid = block(pyramid)
        return pyramid
