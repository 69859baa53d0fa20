"""TrialSpec: everything one trial needs, validated once at the edge.

Every field has a default that runs on a laptop CPU: `TrialSpec()` is the CPU-sized default trial on the
built-in long-tail data. Sections mirror the detector: data → backbone → neck → heads, then optimisation.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.errors import FrostError, shown
from trainers.home import frost_home
from trainers.safe_yaml import MAX_SET_BYTES, check_yaml_shape, read_yaml

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")
DETECTORS = ("faster_rcnn", "retinanet", "fcos")
NORMS = ("none", "gn", "bn")
_FREEZE_RE = re.compile(r"^(frozen|finetune|partial:[1-9][0-9]*)$")


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` in a spec is a typo, never a setting (an lr of inf trains nothing).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SynthSpec(_Section):
    """The built-in long-tail detection data (see trainers/synth/dataset.py)."""

    seed: int = 0
    train_images: int = Field(320, ge=1)
    val_images: int = Field(96, ge=1)
    image_size: int = Field(128, ge=32, le=1024)
    classes: int = Field(16, ge=2, le=64)
    max_objects: int = Field(4, ge=1, le=32)
    zipf: float = Field(1.5, gt=0, description="power-law exponent of class frequencies")
    version: Literal[1] = Field(
        1,
        description="generator version: bumped when trainers/synth/dataset.py draws differently (new cache)",
    )
    format: Literal["coco", "lvis"] = Field(
        "coco",
        description="lvis: the same images and boxes plus LVIS's per-image neg_category_ids / "
        "not_exhaustive_category_ids, so evaluation is federated (docs/evaluation.md)",
    )

    def identity(self) -> dict[str, Any]:
        """What names the generated data set (its cache folder, its summary.json `spec`).

        The COCO format leaves `format` out, so data sets cached before the field existed stay valid.
        """
        return self.model_dump(exclude=self._not_identity())

    def identity_json(self) -> str:
        """`identity()` as pydantic's JSON (what the cache folder's name hashes)."""
        return self.model_dump_json(exclude=self._not_identity())

    def _not_identity(self) -> set[str] | None:
        return {"format"} if self.format == "coco" else None


class SplitSpec(_Section):
    """One split of a COCO-format dataset. Relative paths are relative to `data.root`."""

    annotations: str
    images: str


class DataSpec(_Section):
    source: Literal["synth", "coco"] = "synth"
    root: str | None = Field(
        None, description="dataset folder; for `synth`, default FROST_HOME/data/synth-<hash>"
    )
    train: SplitSpec = SplitSpec(annotations="annotations/train.json", images="images")
    val: SplitSpec = SplitSpec(annotations="annotations/val.json", images="images")
    synth: SynthSpec = SynthSpec()
    drop_invalid_boxes: bool = Field(
        False, description="drop (and log the count of) boxes outside the image or of zero area"
    )
    limit_train: int | None = Field(None, ge=1, description="use only the first N train images")
    limit_val: int | None = Field(None, ge=1, description="use only the first N val images")

    @model_validator(mode="after")
    def _coco_needs_root(self) -> DataSpec:
        if self.source == "coco" and not self.root:
            raise ValueError("data.root is required when data.source is 'coco'")
        return self

    def resolved_root(self) -> Path:
        if self.root:
            return Path(self.root).expanduser().resolve()
        digest = hashlib.sha256(self.synth.identity_json().encode()).hexdigest()[:10]
        return frost_home() / "data" / f"synth-{digest}"


class BackboneSpec(_Section):
    name: Literal[BACKBONES] = "resnet18"  # type: ignore[valid-type]
    weights: str = Field(
        "builtin",
        description="builtin (offline-pretrained classifier, made on first use) | imagenet | none | "
        "path or URI of a classifier checkpoint",
    )
    freeze: str = Field("frozen", description="frozen | finetune | partial:K (last K stages trainable)")
    norm: Literal["frozen_bn", "bn"] = Field(
        "frozen_bn",
        description="frozen_bn: FrozenBatchNorm2d everywhere (statistics fixed); bn: BatchNorm2d, "
        "kept in eval mode in frozen stages",
    )
    weights_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="optional pin: the sha256 of the weights file (a path or https:// URL), checked before loading",
    )
    returned_stages: list[int] = Field(
        [2, 3, 4], description="backbone stages feeding the FPN (1-based; resnet: layer2..layer4)"
    )

    @field_validator("returned_stages")
    @classmethod
    def _stages_in_order(cls, stages: list[int]) -> list[int]:
        # Checked here, so `frost validate` rejects it, not a trial minutes later (trainers/trunks.py: 4 stages).
        if not stages or any(s not in (1, 2, 3, 4) for s in stages) or stages != sorted(set(stages)):
            raise ValueError(f"expected increasing stage numbers from 1..4 (e.g. [2, 3, 4]), got {stages}")
        return stages

    @field_validator("weights")
    @classmethod
    def _weights_source(cls, value: str) -> str:
        if value.startswith("http://"):
            raise ValueError(
                "weights over plain http:// can be swapped in transit: use https:// or a local path"
            )
        return value

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_form(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"partial"}:
            value = f"partial:{value['partial']}"
        if not isinstance(value, str) or not _FREEZE_RE.match(value):
            raise ValueError(f"must be 'frozen', 'finetune' or 'partial:K' with K >= 1, got {shown(value)}")
        return value

    @property
    def freeze_mode(self) -> str:
        """frozen / finetune / partial, without the stage count."""
        return self.freeze.split(":")[0]

    def trainable_stages(self, num_stages: int) -> int:
        """How many of the last stages train (0 = frozen, num_stages = all)."""
        if self.freeze == "frozen":
            return 0
        if self.freeze == "finetune":
            return num_stages
        return min(int(self.freeze.split(":")[1]), num_stages)


class NeckSpec(_Section):
    fpn_channels: int = Field(64, ge=8, le=1024)
    extra_blocks: int = Field(0, ge=0, le=8, description="repeated top-down + bottom-up blocks after FPN")
    norm: Literal[NORMS] = "none"  # type: ignore[valid-type]


class HeadSpec(_Section):
    rpn_convs: int = Field(1, ge=1, le=8, description="Faster R-CNN: RPN conv depth")
    box_convs: int = Field(0, ge=0, le=8, description="Faster R-CNN: conv layers of the box head")
    box_fc: int = Field(128, ge=16, le=4096, description="Faster R-CNN: width of the box head FC layers")
    box_fc_layers: int = Field(1, ge=1, le=4, description="Faster R-CNN: number of box head FC layers")
    convs: int = Field(2, ge=1, le=8, description="RetinaNet / FCOS: conv depth of each head tower")
    norm: Literal[NORMS] = "none"  # type: ignore[valid-type]
    rois_per_image: int = Field(64, ge=8, description="Faster R-CNN: sampled RoIs per image in training")
    rpn_pre_nms_top_n: int = Field(300, ge=10)
    rpn_post_nms_top_n: int = Field(150, ge=10)
    detections_per_image: int = Field(100, ge=1)
    score_threshold: float = Field(0.01, ge=0.0, lt=1.0)


class InputSpec(_Section):
    image_size: int = Field(128, ge=32, le=2048, description="shorter side resized to this; longer <= 4/3 x")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip in training")


class OptimSpec(_Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(
        [0.75], description="step schedule: fractions of the total steps where lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)

    @field_validator("milestones")
    @classmethod
    def _milestones_are_fractions(cls, value: list[float]) -> list[float]:
        # Fractions of the run: 0 or below never comes, 1 or beyond never arrives (and NaN is neither).
        outside = [m for m in value if not 0 < m < 1]
        if outside:
            raise ValueError(
                f"each milestone is a fraction of the total steps in (0, 1), got {shown(outside)}"
            )
        return value

    grad_clip: float | None = Field(10.0, gt=0, description="max gradient norm; null disables")


class TrainSpec(_Section):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(
        8,
        ge=1,
        description="the global batch: images per optimisation step over all data-parallel workers, each "
        "training on its share (docs/distributed.md); the learning rate is not scaled with the workers",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision, used on CUDA only")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    keep_checkpoints: int = Field(2, ge=1, description="newest epoch checkpoints kept on disk")
    log_every: int = Field(10, ge=1, description="progress line every N steps")


class EvalSpec(_Section):
    every: int = Field(1, ge=1, description="evaluate every N epochs (and always after the last)")
    batch_size: int = Field(16, ge=1)
    rare_max: int = Field(10, ge=1, description="classes in <= this many train images are rare")
    common_max: int = Field(100, ge=1, description="... <= this many are common; more are frequent")
    protocol: Literal["auto", "coco", "lvis"] = Field(
        "auto",
        description="coco: COCOeval; lvis: LVIS's federated rules (docs/evaluation.md); auto: lvis when the "
        "val images carry neg_category_ids / not_exhaustive_category_ids, else coco",
    )
    max_detections: int | None = Field(
        None,
        ge=1,
        description="detections per image evaluated (and the detector's cap at least); null: 100 for coco, "
        "300 for lvis",
    )

    @model_validator(mode="after")
    def _buckets_ordered(self) -> EvalSpec:
        if self.common_max < self.rare_max:
            raise ValueError("eval.common_max must be >= eval.rare_max")
        return self


class CacheSpec(_Section):
    """The frozen-feature cache (trainers/features.py, docs/feature-cache.md)."""

    features: bool = Field(
        True,
        description="frozen / partial:K trials read the frozen part of the backbone from a per-image cache "
        "built once (ignored for fine-tuned trials)",
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of cached features")
    # At most 2**30 MiB (1 PiB): far beyond any disk, and small enough that the bytes stay an exact int.
    budget_mb: float | None = Field(
        None,
        gt=0,
        le=2**30,
        description="largest cache a trial may build, MiB; default: a quarter of the free disk",
    )


class TrialSpec(_Section):
    """One trial: one detector configuration, trained and evaluated."""

    data: DataSpec = DataSpec()
    detector: Literal[DETECTORS] = "faster_rcnn"  # type: ignore[valid-type]
    backbone: BackboneSpec = BackboneSpec()
    neck: NeckSpec = NeckSpec()
    heads: HeadSpec = HeadSpec()
    input: InputSpec = InputSpec()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    cache: CacheSpec = CacheSpec()
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def with_detection_cap(self, max_detections: int) -> TrialSpec:
        """This spec with the detector allowed at least `max_detections` boxes per image.

        An evaluation capped above what the model may output would measure the model's cap, not the
        protocol's (LVIS evaluates 300 per image; heads.detections_per_image defaults to COCO's 100).
        """
        if self.heads.detections_per_image >= max_detections:
            return self
        heads = self.heads.model_copy(update={"detections_per_image": max_detections})
        return self.model_copy(update={"heads": heads})


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per error, each naming the dotted field path."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"] if p not in ("function-after",))
        path = f"{prefix}{path}" if path else (prefix.rstrip(".") or "<spec>")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    if "=" not in text:
        raise FrostError(f"--set {shown(text)}: expected dotted.path=value")
    path, raw = text.split("=", 1)
    if not path.strip():
        raise FrostError(f"--set {shown(text)}: empty field path")
    where = f"--set {shown(path.strip())}"
    if len(text) > MAX_SET_BYTES:  # the same limits as a spec file's: a flag is no way around them
        raise FrostError(
            f"{where}: a value of {len(raw):,} characters; --set takes at most {MAX_SET_BYTES:,}"
        )
    try:
        check_yaml_shape(where, raw)
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise FrostError(f"{where}: nested too deeply") from None
    return path.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `--set` overrides to raw spec data (validation happens afterwards)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise FrostError(f"--set {shown(text)}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_trial_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> TrialSpec:
    """YAML file (or the defaults) + dotted overrides → validated TrialSpec, or FrostError."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    try:
        return TrialSpec.model_validate(data)
    except ValidationError as exc:
        where = f"{path}" if path else "trial spec"
        raise FrostError(f"{where} is invalid:\n{format_validation_error(exc)}") from None


def dump_trial_spec(spec: TrialSpec, path: Path) -> None:
    path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json()), sort_keys=False))
