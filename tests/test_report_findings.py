"""The report's arithmetic on rows fed by hand: pairing by capacity key, mean ± std, deltas judged against
the seed spread, stopped trials apart, and a finding that follows the numbers."""

from __future__ import annotations

import math

import pytest

from service.findings import Stat, compare, stat_of
from service.report import build_report
from service.report_rows import ReportRow


def row(capacity, freeze, seed, ap, ap_r=None, fate="completed", epochs=4, **metrics) -> ReportRow:
    values = {
        "AP": ap,
        "AP_r": ap if ap_r is None else ap_r,
        "trainable_share": 0.3 if freeze == "frozen" else 1.0,
    }
    values.update(
        step_time_s=1.0 if freeze == "frozen" else 2.0, peak_memory_mb=800.0 if freeze == "frozen" else 1000.0
    )
    values.update(metrics)
    return ReportRow(
        f"{capacity}-{freeze}-{seed}", capacity, freeze, str(seed), fate, epochs, 4, values, f"fpn={capacity}"
    )


def test_mean_and_sample_std():
    cell = stat_of([0.1, 0.2, 0.3])
    assert cell == Stat(mean=pytest.approx(0.2), std=pytest.approx(0.1), n=3)
    assert stat_of([0.5]) == Stat(0.5, None, 1)
    assert stat_of([]) is None
    assert cell.text() == "0.200 ± 0.100 (n=3)"


def test_delta_verdicts():
    a, b = Stat(0.50, 0.03, 3), Stat(0.40, 0.04, 3)
    win = compare("c", "", "frozen", "AP", a, b)
    assert win.value == pytest.approx(0.10) and win.spread == pytest.approx(0.05) and win.verdict == "better"
    assert compare("c", "", "frozen", "AP", b, a).verdict == "worse"
    assert compare("c", "", "frozen", "AP", Stat(0.42, 0.03, 3), b).verdict == "tie"  # 0.02 <= 0.05
    assert compare("c", "", "frozen", "AP", Stat(0.5, None, 1), b).verdict == "one seed"


def rows_where_frozen(ap_frozen: list[float], ap_tuned: list[float], capacity="A") -> list[ReportRow]:
    return [row(capacity, "frozen", s, v) for s, v in enumerate(ap_frozen)] + [
        row(capacity, "finetune", s, v) for s, v in enumerate(ap_tuned)
    ]


def test_finding_follows_the_numbers():
    wins = build_report("s", rows_where_frozen([0.50, 0.52, 0.48], [0.30, 0.32, 0.28]))
    assert "frozen beats fine-tuned by 0.200" in wins.finding
    assert "AP 0.500 ± 0.020 (n=3) vs fine-tuned 0.300 ± 0.020 (n=3)" in wins.finding
    loses = build_report("s", rows_where_frozen([0.30, 0.32, 0.28], [0.50, 0.52, 0.48]))
    assert "frozen trails fine-tuned by 0.200" in loses.finding
    ties = build_report("s", rows_where_frozen([0.40, 0.45, 0.35], [0.41, 0.46, 0.36]))
    assert "a tie (difference -0.010 within the seed spread 0.071)" in ties.finding
    assert "beats" not in ties.finding and "trails" not in ties.finding
    assert "step time frozen/fine-tuned 0.50 (n=3/3)" in wins.finding
    assert "peak memory frozen/fine-tuned 0.80 (n=3/3)" in wins.finding


def test_pairs_by_capacity_and_trend_with_capacity():
    rows = rows_where_frozen([0.30, 0.31], [0.50, 0.52], "light") + rows_where_frozen(
        [0.60, 0.61], [0.40, 0.41], "heavy"
    )
    for r in rows:
        r.metrics["head_params"] = 10.0 if r.capacity == "light" else 99.0
    report = build_report("s", rows)
    assert report.capacities == ["light", "heavy"]
    ap = {d.capacity: d for d in report.deltas if d.metric == "AP"}
    assert ap["light"].value == pytest.approx(-0.205) and ap["light"].verdict == "worse"
    assert ap["heavy"].value == pytest.approx(0.20) and ap["heavy"].verdict == "better"
    assert ap["heavy"].n == ap["heavy"].n_baseline == 2
    assert "AP delta grows from -0.205 (n=2/2) to +0.200 (n=2/2)" in report.finding


def test_stopped_trials_are_rows_of_their_own_never_averaged():
    rows = rows_where_frozen([0.50, 0.52], [0.30, 0.32])
    rows.append(row("A", "frozen", 9, 0.01, fate="stopped", epochs=1))
    rows.append(row("A", "finetune", 8, 0.0, fate="error"))
    rows.append(row("A", "finetune", 7, 0.0, fate=None))
    report = build_report("s", rows)
    data = report.to_json()
    frozen = next(r for r in data["rows"] if r["freeze"] == "frozen" and not r["stopped"])
    assert frozen["n"] == 2 and frozen["AP"] == pytest.approx(0.51)
    assert frozen["AP_std"] == pytest.approx(math.sqrt(2) * 0.01)
    stopped = [r for r in data["rows"] if r["stopped"]]
    assert stopped == [pytest.approx(stopped[0])] and stopped[0]["epoch"] == 1 and stopped[0]["AP"] == 0.01
    assert [e["trial_id"] for e in data["errors"]] == ["A-finetune-8"]
    assert data["unfinished"] == ["A-finetune-7"]
    assert "1 trial(s) stopped early" in data["finding"] and "1 trial(s) had not finished" in data["finding"]
    assert {"sweep", "rows", "deltas", "finding"} <= set(data)


def test_no_baseline_no_claim():
    report = build_report("s", [row("A", "frozen", 0, 0.5)])
    assert report.deltas == [] and "nothing to compare" in report.finding


def test_labels_name_what_differs_between_capacities_and_minus_one_is_no_score():
    from service.report_rows import _figures, label_capacities

    rows = [row("A", "frozen", 0, 0.5), row("A", "finetune", 0, 0.4), row("B", "frozen", 0, 0.3)]
    rows[0].fields = rows[1].fields = {"neck.fpn_channels": "64", "detector": "faster_rcnn"}
    rows[2].fields = {"neck.fpn_channels": "128", "detector": "faster_rcnn"}
    label_capacities(rows)
    assert [r.label for r in rows] == [
        "neck.fpn_channels=64",
        "neck.fpn_channels=64",
        "neck.fpn_channels=128",
    ]
    assert _figures({"AP": 0.2, "AP_f": -1.0, "step_time_s": 0.5, "loss": 3.0}) == {
        "AP": 0.2,
        "step_time_s": 0.5,
    }
