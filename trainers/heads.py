"""Detection heads after the neck: Faster R-CNN (RPN + box head), RetinaNet and FCOS, at the spec's capacity."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.misc import Conv2dNormActivation

from trainers.config import TrialSpec
from trainers.neck import NormFactory, norm_factory
from trainers.roi_align import MultiScaleRoIAlign


class FrostBackbone(Protocol):
    """What the heads need of a backbone (trainers/models.py FrostBackbone): its pyramid's width and strides.
    A Protocol, so this module does not import models.py (which builds the heads from here)."""

    out_channels: int
    level_strides: list[int]


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


def _set_towers(head: RetinaNetHead | FCOSHead, channels: int, spec: TrialSpec) -> None:
    """Classification and regression towers of `heads.convs` convs with `heads.norm`; class 0 never scores."""
    classification, regression = head.classification_head, head.regression_head
    assert isinstance(classification, nn.Module) and isinstance(regression, nn.Module)  # for mypy
    classification.conv = head_tower(channels, spec.heads.convs, norm_factory(spec.heads.norm))
    regression.conv = head_tower(channels, spec.heads.convs, norm_factory(spec.heads.norm))
    classification.register_forward_hook(_suppress_background)


def _dense_options(spec: TrialSpec, anchors: AnchorGenerator, head: nn.Module) -> dict[str, Any]:
    """Keyword arguments RetinaNet and FCOS share: input sizes, anchors, head, score threshold, detections."""
    h = spec.heads
    return dict(
        **_input_sizes(spec),
        anchor_generator=anchors,
        head=head,
        score_thresh=h.score_threshold,
        detections_per_img=h.detections_per_image,
    )


def _retinanet(spec: TrialSpec, backbone: FrostBackbone, num_classes: int) -> RetinaNet:
    c = backbone.out_channels
    anchors = _anchors(backbone.level_strides, 2, (0.5, 1.0, 2.0))
    head = RetinaNetHead(c, anchors.num_anchors_per_location()[0], num_classes + 1)
    # torchvision fixes the towers at 4 convs without norm: rebuild them at the requested depth and norm.
    _set_towers(head, c, spec)
    return RetinaNet(backbone, num_classes + 1, **_dense_options(spec, anchors, head))


def _fcos(spec: TrialSpec, backbone: FrostBackbone, num_classes: int) -> FCOS:
    c = backbone.out_channels
    # FCOS is anchor-free: one "anchor" per location whose size is the level's stride (its regression
    # ranges are derived from it: [4, 8] x size).
    anchors = _anchors(backbone.level_strides, 1, (1.0,))
    # num_convs=0: torchvision's towers hard-code GroupNorm(32, C), which fails for C not divisible by 32.
    head = FCOSHead(c, 1, num_classes + 1, num_convs=0)
    _set_towers(head, c, spec)
    return FCOS(backbone, num_classes + 1, **_dense_options(spec, anchors, head))


BUILDERS: dict[str, Callable[[TrialSpec, FrostBackbone, int], nn.Module]] = {  # by config.DETECTORS name
    "faster_rcnn": _faster_rcnn,
    "retinanet": _retinanet,
    "fcos": _fcos,
}
