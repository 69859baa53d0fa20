"""The synth generator family's object kinds: shape x texture x colour, in one fixed catalogue.

The catalogue's first 64 kinds come in look-alike pairs (two kinds that differ in one factor, subtly) and are
the detection classes (`classes` of them, trainers/synth/dataset.py); every kind, in catalogue order, is a class of
the upstream classification task (trainers/synth/pretrain.py), and kinds that are not detection classes appear as
unannotated distractors. Drawing them is trainers/synth/render.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainers.errors import FrostError

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
