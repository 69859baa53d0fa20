"""Where a sweep's MLflow runs live, and the one command that shows them."""

from __future__ import annotations

import shlex
from pathlib import Path


def default_tracking_uri(root: Path) -> str:
    """The embedded default store: SQLite in the project folder."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def embedded_artifact_root(tracking_uri: str) -> str | None:
    """`<root>/mlartifacts` for a SQLite store at `<root>/mlflow.db`; None when a server decides."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(tracking_uri.removeprefix("sqlite:///"))
    return str(db_path.resolve().parent / "mlartifacts")


def mlflow_ui_command(tracking_uri: str, artifact_root: str | None = None) -> str:
    """The one command that shows the runs of `tracking_uri` in a browser.

    An http(s) URI is a tracking server, which serves the UI itself: the answer is the address to open.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    parts = ["mlflow", "ui", "--backend-store-uri", tracking_uri]
    artifact_root = artifact_root or embedded_artifact_root(tracking_uri)
    if artifact_root:
        parts += ["--default-artifact-root", artifact_root]
    parts += ["--host", "127.0.0.1"]
    return " ".join(shlex.quote(p) for p in parts)
