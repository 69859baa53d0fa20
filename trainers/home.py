"""The project folder (FROST_HOME): built-in data and weights, the feature cache, sweeps, MLflow's store.

One resolver and one setter, imported by everything that needs the folder; no other import here, so the
light commands (`frost ls`, `frost status`) resolve it without loading pydantic or torch.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT = "frost-runs"


def frost_home(root: str | Path | None = None) -> Path:
    """`root`, else $FROST_HOME, else ./frost-runs, as an absolute path."""
    return Path(root or os.environ.get("FROST_HOME") or DEFAULT).expanduser().resolve()


def use_home(path: str | Path) -> None:
    """Make `path` this process's project folder, and its children's (Ray workers, data-parallel workers)."""
    os.environ["FROST_HOME"] = str(path)
