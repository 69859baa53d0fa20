"""Drawing the synth generator family: objects of a kind, clutter, backgrounds, scenes and classification crops.

Every function draws from the numpy generator it is given, so a scene is a function of its generator's seed.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from trainers.synth.kinds import COLOURS, HUE_JITTER_DEG, ROTATION_DEG, TEXTURES, Kind

# Object sizes (longer side of the shape) as fractions of the image size: 10–70 px in a 128 px image.
DETECTION_SIZE = (0.08, 0.55)
CROP_SIZE = (0.2, 0.85)
MIN_OBJECT_PX = 6.0  # smaller shapes may cover no pixel by half: no box
MAX_OVERLAP_IOU = 0.2


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
    rng: np.random.Generator, sprite: Sprite, size: int, taken: Sequence[tuple[int, ...]]
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
