"""Classifier trunks: where the stem and the four stages of each torchvision classifier live.

Stages. ResNets: stem = conv1/bn1, stages 1..4 = layer1..layer4 (strides 4, 8, 16, 32).
MobileNetV3-Large: stages are cut where the stride changes: stem = features[0:2] (stride 2), stage 1 =
features[2:4] (stride 4, 24 ch), stage 2 = features[4:7] (stride 8, 40 ch), stage 3 = features[7:13]
(stride 16, 112 ch), stage 4 = features[13:17] (stride 32, 960 ch, the final 1x1 conv included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from trainers.errors import FrostError, shown

HEAD_KEY_PREFIXES = ("fc.", "classifier.")  # classifier heads, dropped when a trunk is loaded


# ------------------------------------------------------------------------------------------ trunk layouts
@dataclass(frozen=True)
class TrunkLayout:
    """Where the stem and the four stages live in a torchvision classifier, and what they output."""

    container: str  # attribute holding the trunk's modules ("" = the classifier itself)
    stem: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    channels: tuple[int, ...]  # output channels of each stage
    norm_eps: float  # BatchNorm eps the classifier was trained with

    def stride(self, stage: int) -> int:
        """Output stride of a (1-based) stage: every layout here has stages at strides 4, 8, 16, 32."""
        return 2 ** (stage + 1)


_RESNET_STAGES = (("layer1",), ("layer2",), ("layer3",), ("layer4",))
LAYOUTS: dict[str, TrunkLayout] = {
    "resnet18": TrunkLayout("", ("conv1", "bn1"), _RESNET_STAGES, (64, 128, 256, 512), 1e-5),
    "resnet34": TrunkLayout("", ("conv1", "bn1"), _RESNET_STAGES, (64, 128, 256, 512), 1e-5),
    "resnet50": TrunkLayout("", ("conv1", "bn1"), _RESNET_STAGES, (256, 512, 1024, 2048), 1e-5),
    "resnet101": TrunkLayout("", ("conv1", "bn1"), _RESNET_STAGES, (256, 512, 1024, 2048), 1e-5),
    "mobilenet_v3_large": TrunkLayout(
        "features",
        ("0", "1"),
        (("2", "3"), ("4", "5", "6"), tuple(str(i) for i in range(7, 13)), ("13", "14", "15", "16")),
        (24, 40, 112, 960),
        1e-3,
    ),
}

# torchvision's published ImageNet classifiers (the classic V1 recipes, as in the paper's setting).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
}


def layout_of(backbone: str) -> TrunkLayout:
    if backbone not in LAYOUTS:
        raise FrostError(
            f"backbone.name: unknown backbone {shown(backbone)}; choose one of {', '.join(LAYOUTS)}"
        )
    return LAYOUTS[backbone]


def build_classifier(backbone: str, norm: str = "bn") -> nn.Module:
    """The torchvision classifier (random init) with the trunk's norm: FrozenBatchNorm2d or BatchNorm2d."""
    layout = layout_of(backbone)
    if norm == "frozen_bn":
        norm_layer: Callable[..., nn.Module] = partial(FrozenBatchNorm2d, eps=layout.norm_eps)
    elif backbone.startswith("mobilenet"):
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # MobileNetV3's own BN settings
    else:
        norm_layer = nn.BatchNorm2d
    return getattr(torchvision.models, backbone)(weights=None, norm_layer=norm_layer)


def is_head_key(key: str) -> bool:
    return key.startswith(HEAD_KEY_PREFIXES)
