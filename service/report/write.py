"""A sweep's report from its folder and MLflow, written beside it: `report/report.md` and the PNGs, also
logged to the sweep's MLflow parent run (`frost report`, and the end of `frost run`)."""

from __future__ import annotations

from pathlib import Path

from service.report.model import Report, build_report
from service.report.rows import sweep_rows
from service.sweep_folder import SweepFolder
from trainers.errors import FrostError
from trainers.files import atomic_write_text, writable_folder
from trainers.logs import log

REPORT_FILE = "report.md"


def sweep_metric_of(folder: SweepFolder) -> str:
    """The scheduler metric of the sweep's saved spec (AP, the spec's default, when it cannot be read)."""
    try:
        return folder.spec().scheduler.metric
    except FrostError as exc:
        log.warning("report: the sweep's spec is unreadable (%s); AP leads the finding", exc)
        return "AP"


def sweep_report(folder: SweepFolder) -> Report:
    """The report of the sweep in `folder` (MLflow's runs, then what only the folder knows)."""
    rows = sweep_rows(folder)
    running = folder.tracking.running
    return build_report(folder.name, rows, running=running, sweep_metric=sweep_metric_of(folder))


def write_report(folder: SweepFolder, report: Report) -> Path:
    """report.md and the PNGs in the sweep's folder; logged to the parent run (best effort)."""
    from service.report.markdown import markdown
    from service.report.plots import plot_report

    out = writable_folder(folder.directory / "report", "report folder")
    uri = folder.tracking.tracking_uri
    history = {}
    if uri and any(r.run_id for r in report.rows):
        from service.report.rows import epoch_history

        try:
            history = epoch_history(uri, report.rows)
        except Exception as exc:  # MLflow down: the plot goes without curves
            log.warning("report: no per-epoch curves from MLflow (%s)", type(exc).__name__)
    plots = plot_report(report, history, out)
    path = out / REPORT_FILE
    atomic_write_text(path, markdown(report, [p.name for p in plots]))
    if uri:
        from service.tracking.reads import attach_to_parent

        attach_to_parent(uri, folder.tracking.parent_run_id, folder=out)
    return path


def report_sweep(directory: Path) -> tuple[Report, Path]:
    """Build and write the sweep's report; its folder's files are read once."""
    folder = SweepFolder(directory)
    # Before MLflow is asked anything: a report folder that cannot be written fails at once, in one line.
    writable_folder(folder.directory / "report", "report folder")
    report = sweep_report(folder)
    return report, write_report(folder, report)
