"""What every format reader produces: images with their objects, categories, and the invalid records found.

A reader never raises for a bad record: it names it as a `Problem` (file, record, why) and goes on, so one run
lists every problem. Whether a problem drops a box or its whole image is the reader's call (`drops_image`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from trainers.errors import shown

# A listing of invalid records stops after this many lines ("... and N more").
MAX_LISTED = 50


@dataclass(frozen=True)
class Problem:
    """One invalid record: the file it is in, which record (e.g. "object 2", "line 3"), and why."""

    file: Path | str
    record: str
    why: str
    drops_image: bool = False

    def line(self) -> str:
        return f"{self.file}: {self.record}: {self.why}"


@dataclass
class Obj:
    """One box, absolute COCO xywh in pixels. `iscrowd` 1: an ignore region (VOC's `difficult`)."""

    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Img:
    """One image: where it is read from, its name under OUT/images, its real size, its objects."""

    source: Path
    file_name: str
    width: int
    height: int
    objects: list[Obj] = field(default_factory=list)
    split: str | None = None  # "train" / "val" when the source says; None: the import splits
    extra: dict[str, Any] = field(default_factory=dict)  # LVIS's per-image lists, kept as they are


@dataclass
class Source:
    """A whole source dataset as read: categories are {id: record with at least `name`}."""

    images: list[Img]
    categories: dict[int, dict[str, Any]]
    problems: list[Problem]
    dropped_images: int = 0


def header_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image file's header (PIL reads no pixels for this), or why it cannot be had."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        return f"missing image {path}"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"unreadable image {path} ({shown(str(exc), 120)})"


def listing(problems: list[Problem], limit: int = MAX_LISTED) -> list[str]:
    """One line per problem, at most `limit` of them and then "... and N more"."""
    lines = [problem.line() for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return lines
