"""The built-in long-tail detection data and the object renderer the upstream classifier pretraining reuses.

Objects are shape × texture × colour combinations ("kinds"). One fixed catalogue orders every kind: its first
64 come in look-alike pairs (two kinds that differ in one factor, subtly) and are the detection classes
(`classes` of them); every kind, in catalogue order, is a class of the upstream classification task
(trainers/pretrain.py), and kinds that are not detection classes appear as unannotated distractors.
So a detector must check all three factors of an object, on cluttered, textured backgrounds, with some
classes seen in only a handful of training images: data on which classifier pretraining can matter.

Everything is drawn from numpy generators seeded by (spec.seed, split, image index): the same spec gives
the same JSON and the same PNG bytes.
"""

from __future__ import annotations

import colorsys
import fcntl
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from trainers.config import DataSpec, SynthSpec
from trainers.errors import FrostError

# Bumped (in config.SynthSpec.version) whenever this module draws differently: the dataset cache path
# hashes the SynthSpec, so old caches are not reused, and pretraining digests include it too.
GENERATOR_VERSION: int = SynthSpec().version

# Every shape is symmetric under a horizontal flip (detector training flips images) and rotations stay
# within ±ROTATION_DEG, so "square" and "diamond" remain different kinds.
SHAPES = tuple("circle ellipse square diamond triangle pentagon hexagon star cross ring".split())
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "grid", "dots", "speckle", "rings")
COLOURS = {  # hue in degrees, >= 26° apart: with ±HUE_JITTER_DEG one never turns into another
    "red": 0,
    "orange": 30,
    "yellow": 56,
    "green": 120,
    "cyan": 180,
    "blue": 222,
    "purple": 272,
    "magenta": 318,
}
ROTATION_DEG = 12.0
HUE_JITTER_DEG = 6.0

# Kinds that differ only in these factor values look alike.
_LOOKALIKES = {
    "texture": [("hstripes", "vstripes"), ("checker", "grid"), ("dots", "speckle"), ("solid", "rings")],
    "shape": [
        ("circle", "hexagon"),
        ("square", "diamond"),
        ("pentagon", "hexagon"),
        ("circle", "ellipse"),
        ("star", "cross"),
        ("ring", "circle"),
        ("triangle", "pentagon"),
    ],
    "colour": [
        ("red", "orange"),
        ("orange", "yellow"),
        ("green", "cyan"),
        ("cyan", "blue"),
        ("blue", "purple"),
    ],
}
DETECTION_CATALOGUE = 64  # the catalogue's look-alike-paired prefix; SynthSpec.classes <= this
_CATALOGUE_SEED = 20220601  # fixed: the catalogue must not depend on any spec

# LVIS frequency buckets by the number of train images containing a class.
RARE_MAX, COMMON_MAX = 10, 100

# Object sizes (longer side of the shape) as fractions of the image size: 10–70 px in a 128 px image.
DETECTION_SIZE = (0.08, 0.55)
CROP_SIZE = (0.2, 0.85)
MIN_OBJECT_PX = 6.0  # smaller shapes may cover no pixel by half: no box
MAX_OVERLAP_IOU = 0.2


@dataclass(frozen=True)
class Kind:
    """One shape × texture × colour combination of the generator family."""

    shape: str
    texture: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour}-{self.texture}-{self.shape}"


@functools.cache
def catalogue() -> tuple[Kind, ...]:
    """Every kind, in a fixed order: 32 look-alike pairs first, then the rest of the product shuffled.

    Each pair varies one factor (texture, shape, colour in turn) between two look-alike values; the
    other factors take their least-used values so far, so any prefix covers the factors evenly.
    """
    rng = np.random.default_rng(_CATALOGUE_SEED)
    factors = {"shape": SHAPES, "texture": TEXTURES, "colour": tuple(COLOURS)}
    ordered: list[Kind] = []

    def uses(factor: str, value: str) -> int:
        return sum(getattr(kind, factor) == value for kind in ordered)

    def least_used(factor: str, options: list) -> Any:
        """The option (a value or a pair of values) used least so far, ties broken at random."""
        score = [sum(uses(factor, v) for v in np.atleast_1d(option)) + rng.random() for option in options]
        return options[int(np.argmin(score))]

    pair = 0
    while len(ordered) < DETECTION_CATALOGUE:
        factor = ("texture", "shape", "colour")[pair % 3]
        a, b = least_used(factor, _LOOKALIKES[factor])
        base = {name: least_used(name, list(values)) for name, values in factors.items() if name != factor}
        first, second = Kind(**{**base, factor: a}), Kind(**{**base, factor: b})
        if first in ordered or second in ordered:
            continue
        ordered += [first, second]
        pair += 1
    rest = [Kind(s, t, c) for s in SHAPES for t in TEXTURES for c in COLOURS if Kind(s, t, c) not in ordered]
    ordered += [rest[i] for i in rng.permutation(len(rest))]
    return tuple(ordered)


def detection_classes(count: int) -> tuple[Kind, ...]:
    if not 1 <= count <= DETECTION_CATALOGUE:
        raise FrostError(f"synth.classes: must be between 1 and {DETECTION_CATALOGUE}, got {count}")
    return catalogue()[:count]


# ---------------------------------------------------------------------------------------------------------
# Drawing


def _rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, saturation, value), dtype=np.float32) * 255


def texture_pattern(
    rng: np.random.Generator, texture: str, u: np.ndarray, v: np.ndarray, period: float
) -> np.ndarray:
    """0/1 pattern of `texture` on coordinates (u, v) in pixels; 1 marks the second colour."""
    phase_u, phase_v = rng.uniform(0, 1, size=2)
    fu, fv = u / period + phase_u, v / period + phase_v
    if texture == "solid":
        return np.zeros_like(u)
    if texture == "hstripes":
        return (fv % 1.0 < 0.5).astype(np.float32)
    if texture == "vstripes":
        return (fu % 1.0 < 0.5).astype(np.float32)
    if texture == "checker":
        return ((np.floor(fu) + np.floor(fv)) % 2).astype(np.float32)
    if texture == "grid":
        return ((fu % 1.0 < 0.3) | (fv % 1.0 < 0.3)).astype(np.float32)
    if texture == "dots":
        du, dv = fu % 1.0 - 0.5, fv % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if texture == "speckle":
        cells = rng.random((int(np.ptp(fu) * 2) + 2, int(np.ptp(fv) * 2) + 2))
        iu = ((fu - fu.min()) * 2).astype(int)
        iv = ((fv - fv.min()) * 2).astype(int)
        return (cells[iu, iv] < 0.45).astype(np.float32)
    if texture == "rings":
        return (np.hypot(u, v) / period % 1.0 < 0.5).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _shape_outline(shape: str, points: int = 48) -> list[np.ndarray]:
    """Polygon(s) in unit coordinates (radius 1, y down); a second polygon is a hole."""
    if shape in ("circle", "ellipse", "ring"):
        t = np.linspace(0, 2 * np.pi, points, endpoint=False)
        circle = np.stack([np.cos(t), np.sin(t)], 1)
        if shape == "ellipse":
            return [circle * [1.0, 0.58]]
        return [circle, circle * 0.52] if shape == "ring" else [circle]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.8]
    if shape == "diamond":
        return [np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=float)]
    if shape == "cross":
        a, b = 1.0, 0.34
        return [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                          [-a, b], [-a, -b], [-b, -b]])]  # fmt: skip
    corners = {"triangle": 3, "pentagon": 5, "hexagon": 6, "star": 10}[shape]
    t = -np.pi / 2 + np.arange(corners) * 2 * np.pi / corners
    radius = np.where(np.arange(corners) % 2, 0.45, 1.0) if shape == "star" else np.ones(corners)
    polygon = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    if shape == "triangle":  # centre the triangle's box, not its centroid
        polygon[:, 1] += 0.25
    return [polygon]


def _shape_mask(polygons: list[np.ndarray], canvas: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased 0..1 mask of pixel-coordinate polygons (first filled, the rest cut out)."""
    big = Image.new("L", (canvas * supersample, canvas * supersample), 0)
    draw = ImageDraw.Draw(big)
    for i, polygon in enumerate(polygons):
        draw.polygon([tuple(p) for p in polygon * supersample], fill=0 if i else 255)
    small = big.resize((canvas, canvas), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _two_tone(rng: np.random.Generator, hue: float, pattern: np.ndarray, bright: bool) -> np.ndarray:
    """Colour a 0/1 pattern: main colour where 0, a dark shade of it where 1, plus shading and noise."""
    saturation = rng.uniform(0.7, 1.0) if bright else rng.uniform(0.0, 0.35)
    value = rng.uniform(0.75, 1.0) if bright else rng.uniform(0.3, 0.85)
    main = _rgb(hue, saturation, value)
    dark = _rgb(hue, saturation, value * rng.uniform(0.25, 0.45))
    rgb = main * (1 - pattern[..., None]) + dark * pattern[..., None]
    h, w = pattern.shape
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.arange(w)[None, :] + np.sin(angle) * np.arange(h)[:, None]) / max(h, w)
    shading = 1 + rng.uniform(0.0, 0.25) * (ramp - ramp.mean())
    return rgb * shading[..., None]


@dataclass
class Sprite:
    """A rendered object: RGBA pixels and its tight box (x0, y0, x1, y1) inside them."""

    rgba: np.ndarray
    box: tuple[int, int, int, int]


def _rotated_grid(canvas: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float32) - (canvas - 1) / 2
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def render_object(rng: np.random.Generator, kind: Kind, size: float) -> Sprite:
    """One object of `kind`, about `size` px across, jittered in hue, aspect, rotation and texture phase.

    The texture's period scales with the object (about 4–6 periods across), so tiny objects are hard to
    tell apart, as they are in real data.
    """
    size = max(size, MIN_OBJECT_PX)
    angle = math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    aspect = rng.uniform(0.87, 1.15)
    radius = np.array([aspect, 1 / aspect]) * size / 2
    canvas = int(math.ceil(size * 1.25)) + 2
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = canvas / 2
    polygons = [(p * radius) @ rotation.T + centre for p in _shape_outline(kind.shape)]
    alpha = _shape_mask(polygons, canvas)
    u, v = _rotated_grid(canvas, angle)
    period = max(3.0, size / rng.uniform(4.0, 6.0))
    pattern = texture_pattern(rng, kind.texture, u, v, period)
    hue = COLOURS[kind.colour] + rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)
    rgb = _two_tone(rng, hue, pattern, bright=True)
    rgb += rng.normal(0, 4.0, rgb.shape)
    rgba = np.dstack([np.clip(rgb, 0, 255), alpha * 255]).astype(np.uint8)
    return Sprite(rgba, _tight_box(rgba[..., 3]))


def render_fitting_object(rng: np.random.Generator, kind: Kind, size: float, limit: int) -> Sprite:
    """`render_object`, shrunk until its tight box fits in `limit` px (aspect and rotation can widen it)."""
    while True:
        sprite = render_object(rng, kind, size)
        x0, y0, x1, y1 = sprite.box
        if max(x1 - x0, y1 - y0) <= limit or size <= MIN_OBJECT_PX:
            return sprite
        size *= 0.9


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(alpha >= 128)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def render_blob(rng: np.random.Generator, size: float, bright: bool) -> Sprite:
    """An irregular textured blob: clutter that is no kind at all."""
    canvas = int(math.ceil(size)) + 2
    corners = int(rng.integers(5, 10))
    t = np.sort(rng.uniform(0, 2 * np.pi, corners))
    r = rng.uniform(0.45, 1.0, corners) * size / 2
    polygon = np.stack([np.cos(t) * r, np.sin(t) * r], 1) + canvas / 2
    alpha = _shape_mask([polygon], canvas, supersample=2)
    u, v = _rotated_grid(canvas, rng.uniform(0, np.pi))
    pattern = texture_pattern(rng, TEXTURES[rng.integers(len(TEXTURES))], u, v, rng.uniform(2.5, 8.0))
    rgb = _two_tone(rng, rng.uniform(0, 360), pattern, bright=bright)
    opacity = 1.0 if bright else rng.uniform(0.35, 0.8)
    rgba = np.dstack([np.clip(rgb, 0, 255), alpha * 255 * opacity]).astype(np.uint8)
    return Sprite(rgba, (0, 0, canvas, canvas))


def paste(image: np.ndarray, sprite: Sprite, x: int, y: int) -> None:
    """Alpha-blend `sprite` into float `image` with its top-left corner at (x, y), clipped to the image."""
    h, w = image.shape[:2]
    sh, sw = sprite.rgba.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h)
    if x0 >= x1 or y0 >= y1:
        return
    patch = sprite.rgba[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32)
    alpha = patch[..., 3:] / 255.0
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - alpha) + patch[..., :3] * alpha


def _paste_anywhere(rng: np.random.Generator, image: np.ndarray, sprite: Sprite) -> None:
    """Paste at a random place, up to half of the sprite outside the image."""
    h, w = sprite.rgba.shape[:2]
    paste(
        image, sprite, int(rng.integers(-w // 2, image.shape[1])), int(rng.integers(-h // 2, image.shape[0]))
    )


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered float RGB background: a smooth low-saturation colour field, faint textured blobs, lines."""
    cells = rng.integers(2, 6)
    hsv = np.stack(
        [
            rng.uniform(0, 1, (cells, cells)),
            rng.uniform(0, 0.3, (cells, cells)),
            rng.uniform(0.2, 0.8, (cells, cells)),
        ],
        -1,
    )
    field = np.array([[colorsys.hsv_to_rgb(*px) for px in row] for row in hsv], dtype=np.float32) * 255
    image = np.asarray(
        Image.fromarray(field.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR), np.float32
    ).copy()
    blobs = math.ceil(rng.integers(3, 9) * height * width / 128**2)  # 3–8 per 128² px, any image size
    for _ in range(blobs):
        blob = render_blob(rng, rng.uniform(0.15, 0.6) * min(height, width), bright=False)
        _paste_anywhere(rng, image, blob)
    lines = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(lines)
    for _ in range(int(rng.integers(1, 6))):
        ends = rng.uniform(0, 1, 4) * [width, height, width, height]
        shade = tuple(int(c) for c in _rgb(rng.uniform(0, 360), rng.uniform(0, 0.4), rng.uniform(0.1, 0.9)))
        draw.line([tuple(ends[:2]), tuple(ends[2:])], fill=shade, width=int(rng.integers(1, 4)))
    return np.asarray(lines, np.float32) + rng.normal(0, rng.uniform(2, 8), (height, width, 3))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place(
    rng: np.random.Generator, sprite: Sprite, size: int, taken: list[tuple[int, ...]]
) -> tuple[int, int]:
    """Top-left corner keeping the sprite's tight box inside the image and, if possible, off `taken`."""
    bx0, by0, bx1, by1 = sprite.box
    for _ in range(30):
        x = int(rng.integers(-bx0, size - bx1 + 1))
        y = int(rng.integers(-by0, size - by1 + 1))
        box = (x + bx0, y + by0, x + bx1, y + by1)
        if all(_iou(box, other) <= MAX_OVERLAP_IOU for other in taken):
            break
    return x, y


def render_scene(
    rng: np.random.Generator, size: int, kinds: list[Kind], distractors: list[Kind]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A `size`² uint8 image with one object per entry of `kinds` (boxes returned as x0, y0, x1, y1)
    and unannotated `distractors` drawn underneath them."""
    low, high = DETECTION_SIZE[0] * size, DETECTION_SIZE[1] * size
    sprites = [render_fitting_object(rng, kind, _log_uniform(rng, low, high), size) for kind in kinds]
    boxes: list[tuple[int, int, int, int]] = []
    corners = []
    for sprite in sprites:
        x, y = _place(rng, sprite, size, boxes)
        corners.append((x, y))
        boxes.append((x + sprite.box[0], y + sprite.box[1], x + sprite.box[2], y + sprite.box[3]))
    image = render_background(rng, size, size)
    clutter = [render_object(rng, kind, _log_uniform(rng, low, high)) for kind in distractors]
    clutter += [
        render_blob(rng, _log_uniform(rng, low, high), bright=True) for _ in range(int(rng.integers(0, 2)))
    ]
    for sprite in clutter:
        paste(image, sprite, *_place(rng, sprite, size, boxes))
    for sprite, (x, y) in zip(sprites, corners):
        paste(image, sprite, x, y)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def render_crop(rng: np.random.Generator, kind: Kind, size: int) -> np.ndarray:
    """A `size`² uint8 classification crop: one object of `kind` on clutter, off-centre, sometimes with a
    distractor blob. Object scales match the detection images' (about 13–54 px at 64 px)."""
    image = render_background(rng, size, size)
    if rng.random() < 0.5:
        blob = render_blob(rng, _log_uniform(rng, CROP_SIZE[0] * size, CROP_SIZE[1] * size), bright=True)
        _paste_anywhere(rng, image, blob)
    sprite = render_fitting_object(
        rng, kind, _log_uniform(rng, CROP_SIZE[0] * size, CROP_SIZE[1] * size), size
    )
    paste(image, sprite, *_place(rng, sprite, size, []))
    return np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# The detection dataset


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 1, "val": 2}[split], index])


def power_law_counts(total: int, classes: int, exponent: float, floor: int) -> np.ndarray:
    """Instances per frequency rank, proportional to rank^-exponent, at least `floor`, summing to `total`
    (largest remainders), so bucket sizes do not depend on sampling luck."""
    weights = np.arange(1, classes + 1, dtype=float) ** -exponent
    floor = min(floor, total // classes)
    spare = total - floor * classes
    share = weights / weights.sum() * spare
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts), kind="stable")[: spare - counts.sum()]] += 1
    return counts + floor


def _split_labels(spec: SynthSpec, split: str) -> list[list[int]]:
    """Class indices of the objects of each image of a split (train: power law; val: balanced)."""
    images = spec.train_images if split == "train" else spec.val_images
    rng = np.random.default_rng([spec.seed, {"train": 1, "val": 2}[split]])
    per_image = rng.integers(1, spec.max_objects + 1, images)
    total = int(per_image.sum())
    if split == "train":
        by_rank = power_law_counts(total, spec.classes, spec.zipf, floor=2)
        counts = np.empty(spec.classes, dtype=int)
        counts[rng.permutation(spec.classes)] = by_rank  # which class is frequent is up to the seed
    else:
        counts = power_law_counts(total, spec.classes, 0.0, floor=0)
    return _deal(rng, counts, per_image)


def _deal(rng: np.random.Generator, counts: np.ndarray, slots: np.ndarray) -> list[list[int]]:
    """Deal counts[c] objects of each class c into images with `slots` objects each, avoiding a second
    object of a class in an image while possible: a class's image count then follows its instance count,
    so the frequency buckets do not depend on sampling luck."""
    free = slots.astype(float).copy()
    contents: list[list[int]] = [[] for _ in slots]
    has = np.zeros((len(slots), len(counts)), dtype=bool)
    for label in np.argsort(-counts, kind="stable"):
        for _ in range(counts[label]):
            weights = free * ~has[:, label]
            if weights.sum() == 0:
                weights = free
            image = int(rng.choice(len(slots), p=weights / weights.sum()))
            free[image] -= 1
            has[image, label] = True
            contents[image].append(int(label))
    return [[labels[i] for i in rng.permutation(len(labels))] for labels in contents]


def _frequency(image_count: int) -> str:
    return "r" if image_count <= RARE_MAX else "c" if image_count <= COMMON_MAX else "f"


def _write_split(
    out_dir: Path, spec: SynthSpec, split: str, categories: list[dict[str, Any]]
) -> dict[str, Any]:
    classes = detection_classes(spec.classes)
    others = catalogue()[spec.classes :]
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, labels in enumerate(_split_labels(spec, split)):
        rng = _split_rng(spec.seed, split, index)
        distractors = [others[i] for i in rng.integers(len(others), size=int(rng.integers(0, 3)))]
        pixels, boxes = render_scene(rng, spec.image_size, [classes[i] for i in labels], distractors)
        file_name = f"{split}/{index + 1:06d}.png"
        Image.fromarray(pixels).save(out_dir / "images" / file_name, format="PNG")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size}
        )
        for label, (x0, y0, x1, y1) in zip(labels, boxes):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[label]["id"],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def _class_counts(coco: dict[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """Per category id: images containing it, and instances."""
    images: dict[int, set[int]] = {c["id"]: set() for c in coco["categories"]}
    instances = dict.fromkeys(images, 0)
    for ann in coco["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    return {k: len(v) for k, v in images.items()}, instances


def write_detection_dataset(out_dir: Path, spec: SynthSpec) -> dict[str, Any]:
    """Write the long-tail COCO-format dataset of `spec` into `out_dir` (annotations/, images/,
    summary.json last) and return the summary. Deterministic in `spec`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": i + 1, "name": kind.name, "supercategory": kind.shape}
        for i, kind in enumerate(detection_classes(spec.classes))
    ]
    train = _write_split(out_dir, spec, "train", categories)
    image_count, instance_count = _class_counts(train)
    for category in categories:  # LVIS-style per-class frequency, from the train split
        category.update(
            image_count=image_count[category["id"]],
            instance_count=instance_count[category["id"]],
            frequency=_frequency(image_count[category["id"]]),
        )
    val = _write_split(out_dir, spec, "val", categories)
    for split, coco in (("train", train), ("val", val)):
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    summary = _summary(spec, categories, train, val)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}


def _summary(spec: SynthSpec, categories: list[dict], train: dict, val: dict) -> dict[str, Any]:
    _, val_instances = _class_counts(val)
    buckets = {"rare": 0, "common": 0, "frequent": 0}
    for category in categories:
        buckets[{"r": "rare", "c": "common", "f": "frequent"}[category["frequency"]]] += 1
    return {
        "spec": spec.model_dump(),
        "classes": len(categories),
        "images": {"train": len(train["images"]), "val": len(val["images"])},
        "instances": {"train": len(train["annotations"]), "val": len(val["annotations"])},
        "train_images_per_class": {c["name"]: c["image_count"] for c in categories},
        "val_instances_per_class": {c["name"]: val_instances[c["id"]] for c in categories},
        "buckets": buckets,
    }


# ---------------------------------------------------------------------------------------------------------
# The cached default dataset


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if missing), released on exit or process death."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_dataset_of(root: Path, spec: SynthSpec) -> bool:
    try:
        summary = json.loads((root / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("spec") == spec.model_dump()


def ensure_synth_dataset(data: DataSpec) -> Path:
    """The dataset folder of `data`; for `synth`, generated on first use. Safe for concurrent callers: one
    generates (under a file lock, into a temporary folder renamed into place), the others wait and reuse."""
    root = data.resolved_root()
    if data.source != "synth" or _is_dataset_of(root, data.synth):
        return root
    with file_lock(root.parent / f".{root.name}.lock"):
        if _is_dataset_of(root, data.synth):
            return root
        if root.exists() and any(root.iterdir()):
            raise FrostError(
                f"data.root: {root} exists but is not the synth dataset of data.synth; "
                "remove it or choose another data.root"
            )
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"frost: generating the synth dataset in {root} ...", file=sys.stderr, flush=True)
        summary = write_detection_dataset(tmp, data.synth)
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
        print(
            f"frost: synth dataset ready ({summary['images']['train']} train / {summary['images']['val']} val "
            f"images, buckets {summary['buckets']}, {summary['seconds']} s)",
            file=sys.stderr,
            flush=True,
        )
    return root
