"""A train / val split for a source that has none: seeded, and stratified so rare classes reach val.

Greedy, rarest class first: for each class in 2 or more images (fewest images first, ties by id) that has no
image in val yet, one of its images (in seeded random order) moves to val, provided no class loses its last
train image by the move. Then images are moved at random, under the same proviso, until val holds
`round(fraction * N)` images. So every class with >= 2 images is in val and in train, and val can end a
little above the fraction when there are more such classes than the fraction allows. Only when no image can
move under the proviso (every class in a single image) does one image move anyway: val is never empty.
"""

from __future__ import annotations

import random

from trainers.importers.model import Img


def _classes(image: Img) -> set[int]:
    return {obj.category_id for obj in image.objects}


def stratified_split(images: list[Img], fraction: float, seed: int) -> None:
    """Set `split` of every image to "train" or "val" (in place)."""
    rng = random.Random(seed)
    order = sorted(images, key=lambda image: image.file_name)
    rng.shuffle(order)
    in_train: dict[int, int] = {}  # class -> train images holding it
    by_class: dict[int, list[int]] = {}
    for index, image in enumerate(order):
        image.split = "train"
        for category in _classes(image):
            in_train[category] = in_train.get(category, 0) + 1
            by_class.setdefault(category, []).append(index)
    val: set[int] = set()

    def move(index: int, force: bool = False) -> bool:
        classes = _classes(order[index])
        if index in val or (not force and any(in_train[c] <= 1 for c in classes)):
            return False
        val.add(index)
        order[index].split = "val"
        for category in classes:
            in_train[category] -= 1
        return True

    if fraction <= 0:
        return
    for category in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        if len(by_class[category]) >= 2 and not val.intersection(by_class[category]):
            any(move(index) for index in by_class[category])
    target = round(fraction * len(order))
    for index in range(len(order)):
        if len(val) >= target:
            break
        move(index)
    if not val and len(order) >= 2:  # every class in one image: val still gets one (frost evaluates on val)
        move(0, force=True)
