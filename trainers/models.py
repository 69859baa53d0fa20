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
R-CNN or "p6", "p7" for RetinaNet / FCOS). The body splits once more at its *cut point*, the last frozen
child: `forward_prefix(x)` runs the fixed part (stem and frozen stages, all of it when `frozen`), and
`forward_suffix(prefix)` the trainable stages (none when `frozen`). Given a `prefix` (the batch's maps read
from the feature cache: trainers/features.py, docs/feature-cache.md), the prefix's outputs are read, not computed.

Optimizer: frozen parameters have requires_grad False; `trainable_parameters(model)` lists the others (the
trainer filters on requires_grad the same way). `count_parameters` counts nn.Parameters only, so the
FrozenBatchNorm2d buffers are in neither count.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from trainers.config import BackboneSpec, TrialSpec
from trainers.errors import FrostError
from trainers.heads import BUILDERS
from trainers.neck import FrostNeck, norm_factory
from trainers.trunks import build_classifier, layout_of
from trainers.weights import load_classifier_state, load_trunk

CUT_OUTPUT = "cut"  # forward_prefix's name for the last frozen output when no returned stage is that output
# The frozen prefix's maps of one batch, read rather than computed: called with the batch the body would have
# seen (to check its shape), it returns what `forward_prefix` would have (trainers/features.py CachedPrefix).
PrefixSource = Callable[[Tensor], "OrderedDict[str, Tensor]"]


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
        # The prefix handed to the current detector forward (`reading`): torchvision's detectors call
        # `backbone(images.tensors)` with nothing else, so the one forward's input waits here, for that call only.
        self._reading: PrefixSource | None = None

    def forward_body(self, x: Tensor, prefix: PrefixSource | None = None) -> OrderedDict[str, Tensor]:
        """The trunk's maps of `x`; with `prefix` (called with `x`, it returns what `forward_prefix(x)` would),
        only the trainable stages run."""
        prefix = prefix or self._reading
        if prefix is not None:
            return self.forward_suffix(prefix(x))
        return self.body(x)

    @contextlib.contextmanager
    def reading(self, prefix: PrefixSource) -> Iterator[None]:
        """During one detector forward, the body's prefix comes from `prefix` (trainers/features.py
        `forward_detector`); afterwards the backbone computes it again."""
        self._reading = prefix
        try:
            yield
        finally:
            self._reading = None

    @property
    def cut_point(self) -> str | None:
        """The last frozen child of the body: everything up to it is fixed (None: nothing is)."""
        frozen = set(self.frozen_modules)
        last = None
        for name, _ in self.body.named_children():
            if name in frozen:
                last = name
        return last

    @property
    def prefix_outputs(self) -> list[str]:
        """Names of the maps `forward_prefix` returns: returned stages inside the prefix, then the cut output
        (under CUT_OUTPUT) when the trainable stages need it and it is not a returned map already."""
        cut, returns = self.cut_point, self._return_layers()
        names: list[str] = []
        for name, _ in self.body.named_children():
            if name in returns:
                names.append(returns[name])
            if name == cut:
                break
        live = self._live_children()
        if live and cut not in returns:
            names.append(CUT_OUTPUT)
        return names

    def _return_layers(self) -> dict[str, str]:
        layers = getattr(self.body, "return_layers", None)
        if not isinstance(layers, dict):
            raise TypeError("FrostBackbone.body must be an IntermediateLayerGetter")
        return layers

    def _live_children(self) -> list[tuple[str, nn.Module]]:
        children = list(self.body.named_children())
        names = [name for name, _ in children]
        cut = self.cut_point
        return children if cut is None else children[names.index(cut) + 1 :]

    def forward_prefix(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Run the frozen prefix of the body (stem and frozen stages) alone: what the feature cache stores."""
        cut, returns, wanted = self.cut_point, self._return_layers(), self.prefix_outputs
        if cut is None:
            raise RuntimeError("forward_prefix: nothing in the body is frozen")
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.body.named_children():
            x = module(x)
            if name in returns:
                out[returns[name]] = x
            if name == cut:
                break
        if CUT_OUTPUT in wanted:
            out[CUT_OUTPUT] = x
        return out

    def forward_suffix(self, prefix: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """The body's output from `forward_prefix`'s: the trainable stages run live on the cut output."""
        returns = self._return_layers()
        out = OrderedDict((name, value) for name, value in prefix.items() if name != CUT_OUTPUT)
        live = self._live_children()
        if not live:
            return out
        cut = self.cut_point
        x = prefix[CUT_OUTPUT] if CUT_OUTPUT in prefix else prefix[returns[str(cut)]]
        for name, module in live:
            x = module(x)
            if name in returns:
                out[returns[name]] = x
        return out

    def forward_neck(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        return self.neck(features)

    def forward(self, x: Tensor, prefix: PrefixSource | None = None) -> OrderedDict[str, Tensor]:
        return self.forward_neck(self.forward_body(x, prefix))

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


def build_backbone(spec: TrialSpec, state: dict[str, Tensor] | None = None) -> FrostBackbone:
    """Trunk (with `state` loaded if given) + neck for `spec.detector`, frozen per `spec.backbone.freeze`."""
    b = spec.backbone
    layout = layout_of(b.name)
    classifier = build_classifier(b.name, b.norm)
    if state is not None:
        load_trunk(classifier, state, b.name)
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


def build_detector(spec: TrialSpec, num_classes: int) -> nn.Module:
    """The detector of `spec` for `num_classes` foreground classes (labels 1..K, 0 = background).

    The classifier weights named by `spec.backbone.weights` are loaded into the trunk; `.backbone` is a
    FrostBackbone, frozen per `spec.backbone.freeze`.
    """
    if num_classes < 1:
        raise FrostError(f"the dataset has no foreground classes (num_classes={num_classes})")
    state = load_classifier_state(spec.backbone.name, spec.backbone.weights, spec.backbone.weights_sha256)
    backbone = build_backbone(spec, state)
    return BUILDERS[spec.detector](spec, backbone, num_classes)


# ---------------------------------------------------------------------------------------------- helpers
def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters to hand to the optimizer: frozen ones are left out (no momentum, no weight decay)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements; buffers (FrozenBatchNorm2d, BN stats) not counted."""
    params: Iterable[nn.Parameter] = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
