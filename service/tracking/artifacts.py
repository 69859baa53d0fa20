"""What a trial's MLflow run shows beside its metrics: per-class AP, its spec, its curves, its predictions.

Built in the driver when a trial ends (service/tracking/callback.py), from the trial's folder, into a staging
folder beside the sweep (`mlflow-staging/<trial_id>/`) that the tracker's outbox uploads when MLflow answers:
an outage delays the upload, never the sweep. Files (a few hundred KB in all):

- `per_class_ap.csv` — the last evaluated epoch's per-class table (trainers/evaluate.py);
- `trial.yaml` — the trial's full spec;
- `curves.png` — AP, AP_r / AP_c / AP_f and loss per epoch;
- `predictions.png` — a few fixed validation images (the first ids), ground truth above, detections with
  score >= PREDICTION_SCORE below, class names drawn.

A trial whose folder is not on this machine (it ran on another node without shared storage) gets
`curves.png` from the history in its last Tune checkpoint, when that is reachable. docs/report.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from service.report.plots import pyplot, save_figure
from service.results import is_number
from service.sweep_folder import Unreadable, trial_history
from trainers.files import read_json_or
from trainers.logs import log

PREDICTION_IMAGES = 3
PREDICTION_SCORE = 0.3
CURVE_METRICS = ("AP", "AP_r", "AP_c", "AP_f")


def last_eval_dir(trial_dir: Path) -> Path | None:
    evals = sorted((trial_dir / "eval").glob("epoch-[0-9]*[0-9]"))
    return evals[-1] if evals else None


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """AP and the long-tail APs per epoch (left), training loss per epoch (right)."""
    plt = pyplot()
    if not history:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 2.8), dpi=80)
    for name in CURVE_METRICS:
        points = [(h["epoch"], h[name]) for h in history if is_number(h.get(name))]
        if points:
            left.plot(*zip(*points), marker="o", label=name)
    left.set(xlabel="epoch", ylabel="AP", title="AP per epoch")
    if left.get_legend_handles_labels()[0]:  # no legend, no matplotlib warning
        left.legend(fontsize=7)
    losses = [(h["epoch"], h["loss"]) for h in history if is_number(h.get("loss"))]
    if losses:
        right.plot(*zip(*losses), marker="o", color="black")
    right.set(xlabel="epoch", ylabel="loss", title="training loss")
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def _val_split(trial_spec: dict[str, Any]) -> tuple[Path, Path] | None:
    """(annotation file, image folder) of the trial's validation split, if on this machine."""
    from trainers.config import TrialSpec

    data = TrialSpec.model_validate(trial_spec).data
    root = data.resolved_root()
    annotations, images = Path(data.val.annotations), Path(data.val.images)
    annotations = annotations if annotations.is_absolute() else root / annotations
    images = images if images.is_absolute() else root / images
    return (annotations, images) if annotations.is_file() else None


def _draw_boxes(axis: Any, boxes: list[tuple[list[float], str]], colour: str) -> None:
    import matplotlib.patches as patches

    for (x, y, w, h), text in boxes:
        axis.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1))
        axis.text(x, y, text, fontsize=5, color="white", backgroundcolor=colour, va="bottom")


def plot_predictions(trial_spec: dict[str, Any], detections: list[dict[str, Any]], path: Path) -> Path | None:
    """Ground truth (top row) and detections (bottom row) on the first PREDICTION_IMAGES val images."""
    plt = pyplot()
    split = _val_split(trial_spec)
    if split is None:
        return None
    coco = json.loads(split[0].read_text())
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    from trainers.data import leaves_folder  # torch: imported where a trial's artifacts are drawn, not before

    # The loader's rule (trainers/data.py): an image named outside the image folder is never read. Only
    # images of a sound shape are drawn; this is a best-effort picture, not the place to validate a dataset.
    shaped = [
        i
        for i in coco.get("images", [])
        if isinstance(i, dict) and isinstance(i.get("id"), int) and isinstance(i.get("file_name"), str)
    ]
    outside = [i["file_name"] for i in shaped if leaves_folder(i["file_name"])]
    if outside:
        log.warning("predictions.png: skipped %d image(s) named outside the image folder", len(outside))
    inside = [i for i in shaped if not leaves_folder(i["file_name"])]
    images = sorted(inside, key=lambda i: i["id"])[:PREDICTION_IMAGES]
    if not images:
        return None
    fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.4), dpi=80, squeeze=False)
    for column, info in enumerate(images):
        picture = plt.imread(str(split[1] / info["file_name"]))
        truth = [
            (a["bbox"], names.get(a["category_id"], "?"))
            for a in coco.get("annotations", [])
            if a["image_id"] == info["id"]
        ]
        found = [
            (d["bbox"], f"{names.get(d['category_id'], '?')} {d['score']:.2f}")
            for d in detections
            if d["image_id"] == info["id"] and d["score"] >= PREDICTION_SCORE
        ]
        for row, (boxes, colour, what) in enumerate(((truth, "green", "truth"), (found, "red", "detected"))):
            axis = axes[row][column]
            axis.imshow(picture)
            _draw_boxes(axis, boxes, colour)
            axis.set_title(f"{what} (image {info['id']})", fontsize=6)
            axis.axis("off")
    return save_figure(fig, path)


def stage_trial_artifacts(trial_dir: Path, staging: Path, checkpoint_dir: Path | None = None) -> list[str]:
    """Write the trial's artifact files into `staging` (emptied first); returns their names."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written: list[str] = []
    try:
        history = trial_history(trial_dir)
    except Unreadable:
        history = []
    if not history and checkpoint_dir is not None:  # the trial's folder is on another node
        saved = read_json_or(checkpoint_dir / "history.json", [])
        history = saved if isinstance(saved, list) else []
    if plot_curves(history, staging / "curves.png", trial_dir.name):
        written.append("curves.png")
    if (trial_dir / "trial.yaml").is_file():
        shutil.copyfile(trial_dir / "trial.yaml", staging / "trial.yaml")
        written.append("trial.yaml")
    evaluated = last_eval_dir(trial_dir)
    if evaluated is not None and (evaluated / "per_class_ap.csv").is_file():
        shutil.copyfile(evaluated / "per_class_ap.csv", staging / "per_class_ap.csv")
        written.append("per_class_ap.csv")
        detections = read_json_or(evaluated / "detections.json", [])
        spec = yaml.safe_load((trial_dir / "trial.yaml").read_text()) if "trial.yaml" in written else None
        if isinstance(spec, dict) and plot_predictions(spec, detections, staging / "predictions.png"):
            written.append("predictions.png")
    return written
