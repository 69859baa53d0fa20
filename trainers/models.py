"""Detectors: classifier trunk (body) → FPN + aggregation blocks (neck) → detection heads.

The question frost asks (Vasconcelos et al., CVPR 2022) is whether a *frozen* ImageNet-style classifier trunk
beats fine-tuning once the parts after it have enough capacity. So this module gets two things exactly right:

* Freezing. `frozen` means no backbone parameter trains AND no normalisation statistic moves; `partial:K`
  trains the last K stages; `finetune` trains everything, stem included. With `backbone.norm = frozen_bn` the
  trunk uses FrozenBatchNorm2d (statistics and affine are buffers, fixed in every mode); with `bn` it uses
  BatchNorm2d and `FrostBackbone.train()` keeps the frozen stages in eval mode, so their running statistics
  stay those of the classifier even while the rest of the detector trains.
* The capacity knobs after the trunk: FPN width and norm, repeated top-down + bottom-up aggregation blocks,
  RPN depth, box-head convs / FC width / FC depth, RetinaNet / FCOS tower depth and norm.

Stages. ResNets: stem = conv1/bn1, stages 1..4 = layer1..layer4 (strides 4, 8, 16, 32).
MobileNetV3-Large: stages are cut where the stride changes: stem = features[0:2] (stride 2), stage 1 =
features[2:4] (stride 4, 24 ch), stage 2 = features[4:7] (stride 8, 40 ch), stage 3 = features[7:13]
(stride 16, 112 ch), stage 4 = features[13:17] (stride 32, 960 ch, the final 1x1 conv included). So
`returned_stages = [2, 3, 4]` means C3..C5 (strides 8..32) for every backbone. The trunk only holds the
stages up to the last returned one; `partial:K` counts the last K of *those*.

The seam for the frozen-feature cache: `detector.backbone` is a `FrostBackbone` whose `forward_body(x)`
returns the trunk's multi-scale features (an OrderedDict "0", "1", ... fine to coarse) and whose
`forward_neck(features)` turns them into the pyramid the heads read ("0", "1", ..., then "pool" for Faster
R-CNN or "p6", "p7" for RetinaNet / FCOS). A cached body output can be fed to `forward_neck` unchanged.

Optimizer: frozen parameters have requires_grad False; `trainable_parameters(model)` lists the others (the
trainer filters on requires_grad the same way). `count_parameters` counts nn.Parameters only, so the
FrozenBatchNorm2d buffers are in neither count.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from trainers.config import BackboneSpec, TrialSpec
from trainers.errors import FrostError

NormFactory = Callable[[int], nn.Module]
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
        raise FrostError(f"backbone.name: unknown backbone {backbone!r}; choose one of {', '.join(LAYOUTS)}")
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


def _is_head_key(key: str) -> bool:
    return key.startswith(HEAD_KEY_PREFIXES)


# ---------------------------------------------------------------------------------------- classifier weights
def load_classifier_state(backbone: str, weights: str) -> dict[str, Tensor] | None:
    """Resolve `backbone.weights` to the trunk's state_dict (classifier head dropped), or None for random init.

    `none` | `builtin` (offline-pretrained, trainers.pretrain) | `imagenet` (torchvision's published weights,
    from the torch.hub cache; downloaded unless FROST_OFFLINE=1) | a path, file:// or http(s):// URI of a
    classifier checkpoint (plain state_dict, or a dict with "state_dict"/"model" and optionally "arch").
    """
    layout_of(backbone)
    if weights == "none":
        return None
    if weights == "builtin":
        from trainers.pretrain import ensure_builtin_classifier  # lazy: pretraining pulls in data code

        path = Path(ensure_builtin_classifier(backbone))
        return _trunk_state(backbone, read_checkpoint(path), str(path))
    if weights == "imagenet":
        state, source = _imagenet_state(backbone)
        return _trunk_state(backbone, state, source)
    if weights.startswith(("http://", "https://")):
        return _trunk_state(backbone, _url_state(weights), weights)
    if weights.startswith("file://"):
        path = Path(unquote(urlparse(weights).path))
    elif "://" in weights:
        scheme = weights.split("://", 1)[0]
        raise FrostError(
            f"backbone.weights: {weights}: {scheme}:// is not supported; copy the checkpoint to a local "
            "path (or http(s):// URL) and give that"
        )
    else:
        path = Path(weights).expanduser()
    return _trunk_state(backbone, read_checkpoint(path), str(path))


def read_checkpoint(path: Path) -> Any:
    """torch.load a checkpoint safely (tensors and plain containers only), or FrostError naming the file."""
    if not path.is_file():
        raise FrostError(f"backbone.weights: {path}: no such checkpoint file")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types (pickle, zip, RuntimeError) for a bad file
        raise FrostError(
            f"backbone.weights: {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _offline() -> bool:
    return os.environ.get("FROST_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def imagenet_weights_file(backbone: str) -> tuple[str, Path]:
    """(download URL, expected cache file) of torchvision's ImageNet weights, honouring TORCH_HOME."""
    enum = getattr(torchvision.models, IMAGENET_WEIGHTS[backbone])
    url = enum.IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _imagenet_state(backbone: str) -> tuple[Any, str]:
    url, path = imagenet_weights_file(backbone)
    if path.is_file():
        return read_checkpoint(path), str(path)

    def unavailable(reason: str) -> FrostError:
        return FrostError(
            f"backbone.weights: imagenet: torchvision's ImageNet weights for {backbone} are not at {path} "
            f"and {reason}. Either place {path.name} (from {url}) at that path (TORCH_HOME decides the "
            "folder), or set backbone.weights to `builtin` (pretrained offline on synthetic data) or to "
            "the path of a classifier checkpoint."
        )

    if _offline():
        raise unavailable("FROST_OFFLINE is set, so no download was tried")
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(path.parent), map_location="cpu", progress=False, check_hash=True
        )
    except Exception as exc:
        raise unavailable(f"the download failed ({type(exc).__name__}: {exc})") from None
    return state, str(path)


def _url_state(url: str) -> Any:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return read_checkpoint(cached)
    if _offline():
        raise FrostError(
            f"backbone.weights: {url}: not in the cache at {cached} and FROST_OFFLINE is set; "
            "place the file there or give a local path"
        )
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(cached.parent), map_location="cpu", progress=False
        )
    except Exception as exc:
        raise FrostError(f"backbone.weights: {url}: download failed ({type(exc).__name__}: {exc})") from None


def _unwrap_state(raw: Any, backbone: str, source: str) -> dict[str, Tensor]:
    """Accept a plain state_dict or {"state_dict"|"model": ..., "arch": ...}; check the architecture."""
    if not isinstance(raw, dict):
        raise FrostError(f"backbone.weights: {source}: expected a state_dict, got {type(raw).__name__}")
    arch = raw.get("arch")
    if arch is not None and arch != backbone:
        raise FrostError(
            f"backbone.weights: {source}: checkpoint is for {arch!r} but backbone.name is {backbone!r}"
        )
    for key in ("state_dict", "model"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not raw or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        raise FrostError(f"backbone.weights: {source}: no state_dict of tensors found in the checkpoint")
    if all(k.startswith("module.") for k in raw):  # saved from DataParallel / DDP
        raw = {k.removeprefix("module."): v for k, v in raw.items()}
    return raw


def _trunk_state(backbone: str, raw: Any, source: str) -> dict[str, Tensor]:
    """The checkpoint's trunk weights, checked key by key and shape by shape against the architecture."""
    state = {k: v for k, v in _unwrap_state(raw, backbone, source).items() if not _is_head_key(k)}
    with torch.device("meta"):  # layout only: no memory, no init cost
        expected = {
            k: v.shape for k, v in build_classifier(backbone).state_dict().items() if not _is_head_key(k)
        }
    # A checkpoint saved from a FrozenBatchNorm2d model has no num_batches_tracked: that is fine.
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k])
    if missing or unexpected or wrong:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise FrostError(
            f"backbone.weights: {source}: keys do not fit a {backbone} classifier: {'; '.join(problems)}"
        )
    return state


def _load_trunk(classifier: nn.Module, state: dict[str, Tensor], backbone: str) -> None:
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_head_key(k) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # _trunk_state checked this already; a mismatch here is a bug
        raise RuntimeError(f"{backbone}: trunk did not load: missing {missing}, unexpected {unexpected}")


# --------------------------------------------------------------------------------------------- norms
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


# ------------------------------------------------------------------------------------------- backbone
class FrostBackbone(nn.Module):
    """Classifier trunk (`body`) + `neck`, split so a cached body output can replace `forward_body`."""

    def __init__(
        self,
        body: nn.Module,
        neck: FrostNeck,
        out_channels: int,
        stem: list[str],
        stages: list[list[str]],
        strides: list[int],
    ) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = out_channels
        self.stem_modules = stem  # names of body children
        self.stage_modules = stages
        self.level_strides = strides  # stride of every pyramid level, extra levels included
        self.frozen_modules: list[str] = []

    def forward_body(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.body(x)

    def forward_neck(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        return self.neck(features)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.forward_neck(self.forward_body(x))

    @property
    def body_frozen(self) -> bool:
        """True when nothing in the body trains: its outputs may then be cached across epochs."""
        return not any(p.requires_grad for p in self.body.parameters())

    def train(self, mode: bool = True) -> FrostBackbone:
        super().train(mode)
        # Frozen stages behave as at inference whatever the detector's mode: BatchNorm2d statistics stay
        # those of the classifier (FrozenBatchNorm2d ignores the mode anyway).
        for name in self.frozen_modules:
            self.body.get_submodule(name).eval()
        return self


def freeze_backbone(backbone: FrostBackbone, spec: BackboneSpec) -> None:
    """Apply `backbone.freeze`: requires_grad off and eval mode for the stem and all but the last K stages."""
    trainable = spec.trainable_stages(len(backbone.stage_modules))
    frozen_stages = backbone.stage_modules[: len(backbone.stage_modules) - trainable]
    frozen = [name for stage in frozen_stages for name in stage]
    if spec.freeze != "finetune":
        frozen = backbone.stem_modules + frozen
    frozen_set = set(frozen)
    for child_name, child in backbone.body.named_children():
        child.requires_grad_(child_name not in frozen_set)
    backbone.frozen_modules = frozen
    backbone.train(backbone.training)


def _check_returned_stages(stages: list[int]) -> None:
    if not stages or any(s not in (1, 2, 3, 4) for s in stages) or stages != sorted(set(stages)):
        raise FrostError(
            f"backbone.returned_stages: expected increasing stage numbers from 1..4 (e.g. [2, 3, 4]), "
            f"got {stages}"
        )


def build_backbone(spec: TrialSpec, state: dict[str, Tensor] | None = None) -> FrostBackbone:
    """Trunk (with `state` loaded if given) + neck for `spec.detector`, frozen per `spec.backbone.freeze`."""
    b = spec.backbone
    _check_returned_stages(b.returned_stages)
    layout = layout_of(b.name)
    classifier = build_classifier(b.name, b.norm)
    if state is not None:
        _load_trunk(classifier, state, b.name)
    trunk = getattr(classifier, layout.container) if layout.container else classifier
    used = max(b.returned_stages)
    return_layers = {layout.stages[s - 1][-1]: str(i) for i, s in enumerate(b.returned_stages)}
    body = IntermediateLayerGetter(trunk, return_layers=return_layers)

    channels = spec.neck.fpn_channels
    strides = [layout.stride(s) for s in b.returned_stages]
    if spec.detector == "faster_rcnn":
        extra: ExtraFPNBlock = LastLevelMaxPool()
        strides.append(strides[-1] * 2)
    else:  # RetinaNet / FCOS: P6 and P7 from P5
        extra = LastLevelP6P7(channels, channels)
        strides += [strides[-1] * 2, strides[-1] * 4]
    neck = FrostNeck(
        [layout.channels[s - 1] for s in b.returned_stages],
        channels,
        extra,
        len(strides),
        norm_factory(spec.neck.norm),
        spec.neck.extra_blocks,
    )
    backbone = FrostBackbone(
        body,
        neck,
        channels,
        stem=list(layout.stem),
        stages=[list(stage) for stage in layout.stages[:used]],
        strides=strides,
    )
    freeze_backbone(backbone, b)
    return backbone


# ---------------------------------------------------------------------------------------------- heads
def head_tower(channels: int, depth: int, norm: NormFactory | None) -> nn.Sequential:
    """`depth` 3x3 conv (+ norm) + ReLU layers, initialised like torchvision's RetinaNet / FCOS towers."""
    tower = nn.Sequential(
        *[Conv2dNormActivation(channels, channels, 3, norm_layer=norm) for _ in range(depth)]
    )
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


def _suppress_background(module: nn.Module, inputs: Any, logits: Tensor) -> Tensor:
    """Forward hook: class 0 (background) of a sigmoid classifier never scores.

    RetinaNet and FCOS take num_classes = K + 1 (labels 1..K) but score classes independently, so channel 0
    is a real class that no target ever marks positive. Untrained, it still passes the score threshold and
    yields label-0 detections. Pinning its logit far below zero makes the head behave as a K-class head:
    sigmoid 0 at inference, zero focal loss and zero gradient in training.
    """
    background = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    background[0] = True
    return logits.masked_fill(background, -1e4)


def _anchors(strides: list[int], size_per_stride: int, ratios: tuple[float, ...]) -> AnchorGenerator:
    sizes = tuple((size_per_stride * s,) for s in strides)
    return AnchorGenerator(sizes, (ratios,) * len(strides))


def _input_sizes(spec: TrialSpec) -> dict[str, int]:
    return {"min_size": spec.input.image_size, "max_size": math.ceil(spec.input.image_size * 4 / 3)}


def _faster_rcnn(spec: TrialSpec, backbone: FrostBackbone, num_classes: int) -> FasterRCNN:
    h, c = spec.heads, backbone.out_channels
    anchors = _anchors(backbone.level_strides, 2, (0.5, 1.0, 2.0))
    levels = list(range(len(spec.backbone.returned_stages)))[:3]  # RoIs from the first 3 FPN levels
    return FasterRCNN(
        backbone,
        num_classes=None,
        **_input_sizes(spec),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=h.rpn_convs),
        rpn_pre_nms_top_n_train=h.rpn_pre_nms_top_n,
        rpn_pre_nms_top_n_test=h.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=h.rpn_post_nms_top_n,
        rpn_post_nms_top_n_test=h.rpn_post_nms_top_n,
        box_roi_pool=MultiScaleRoIAlign([str(i) for i in levels], output_size=7, sampling_ratio=2),
        box_head=FastRCNNConvFCHead(
            (c, 7, 7), [c] * h.box_convs, [h.box_fc] * h.box_fc_layers, norm_layer=norm_factory(h.norm)
        ),
        box_predictor=FastRCNNPredictor(h.box_fc, num_classes + 1),
        box_batch_size_per_image=h.rois_per_image,
        box_score_thresh=h.score_threshold,
        box_detections_per_img=h.detections_per_image,
    )


def _set_towers(head: nn.Module, channels: int, spec: TrialSpec) -> None:
    """Classification and regression towers of `heads.convs` convs with `heads.norm`; class 0 never scores."""
    head.classification_head.conv = head_tower(channels, spec.heads.convs, norm_factory(spec.heads.norm))
    head.regression_head.conv = head_tower(channels, spec.heads.convs, norm_factory(spec.heads.norm))
    head.classification_head.register_forward_hook(_suppress_background)


def _retinanet(spec: TrialSpec, backbone: FrostBackbone, num_classes: int) -> RetinaNet:
    h, c = spec.heads, backbone.out_channels
    anchors = _anchors(backbone.level_strides, 2, (0.5, 1.0, 2.0))
    head = RetinaNetHead(c, anchors.num_anchors_per_location()[0], num_classes + 1)
    # torchvision fixes the towers at 4 convs without norm: rebuild them at the requested depth and norm.
    _set_towers(head, c, spec)
    return RetinaNet(
        backbone,
        num_classes + 1,
        **_input_sizes(spec),
        anchor_generator=anchors,
        head=head,
        score_thresh=h.score_threshold,
        detections_per_img=h.detections_per_image,
    )


def _fcos(spec: TrialSpec, backbone: FrostBackbone, num_classes: int) -> FCOS:
    h, c = spec.heads, backbone.out_channels
    # FCOS is anchor-free: one "anchor" per location whose size is the level's stride (its regression
    # ranges are derived from it: [4, 8] x size).
    anchors = _anchors(backbone.level_strides, 1, (1.0,))
    # num_convs=0: torchvision's towers hard-code GroupNorm(32, C), which fails for C not divisible by 32.
    head = FCOSHead(c, 1, num_classes + 1, num_convs=0)
    _set_towers(head, c, spec)
    return FCOS(
        backbone,
        num_classes + 1,
        **_input_sizes(spec),
        anchor_generator=anchors,
        head=head,
        score_thresh=h.score_threshold,
        detections_per_img=h.detections_per_image,
    )


_DETECTORS = {"faster_rcnn": _faster_rcnn, "retinanet": _retinanet, "fcos": _fcos}


def build_detector(spec: TrialSpec, num_classes: int) -> nn.Module:
    """The detector of `spec` for `num_classes` foreground classes (labels 1..K, 0 = background).

    The classifier weights named by `spec.backbone.weights` are loaded into the trunk; `.backbone` is a
    FrostBackbone, frozen per `spec.backbone.freeze`.
    """
    if num_classes < 1:
        raise FrostError(f"the dataset has no foreground classes (num_classes={num_classes})")
    state = load_classifier_state(spec.backbone.name, spec.backbone.weights)
    backbone = build_backbone(spec, state)
    return _DETECTORS[spec.detector](spec, backbone, num_classes)


# ---------------------------------------------------------------------------------------------- helpers
def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters to hand to the optimizer: frozen ones are left out (no momentum, no weight decay)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements; buffers (FrozenBatchNorm2d, BN stats) not counted."""
    params: Iterable[nn.Parameter] = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
