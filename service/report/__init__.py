"""The report: "frozen or fine-tuned, at which capacity, at what cost", from a sweep's trials.

- rows.py      one trial as the report reads it (ReportRow), from MLflow's runs and the sweep's folder
- stats.py     differences of seed means with 95% intervals (paired or Welch), verdicts, the capacity trend
- findings.py  cells, deltas and comparisons, and the finding paragraph written from them
- model.py     Report: rows -> groups -> deltas, trends, JSON (pure: the tests feed rows by hand)
- markdown.py  report.md: headline table, a table per capacity, trends, stopped / errored trials
- plots.py     the report's PNGs (AP vs trainable share, per-epoch curves, resources, deltas with intervals)
- write.py     a sweep's report from its folder, written beside it and logged to its MLflow parent run

`frost report` is service/commands/report.py; the rules are in docs/report.md.
"""
