"""The report's arithmetic on rows fed by hand: pairing by capacity key, mean ± std, deltas judged by their
95% interval (service/report/stats.py), capacities in order of the frozen trainable share, the capacity trend, stopped
trials apart with their decision in words, and a finding that follows the numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.report.findings import Stat, compare, stat_of
from service.report.model import build_report
from service.report.rows import ReportRow


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


def by_seed(*values: float) -> dict[str, float]:
    return {str(i): v for i, v in enumerate(values)}


def test_mean_and_sample_std():
    cell = stat_of([0.1, 0.2, 0.3])
    assert cell == Stat(mean=pytest.approx(0.2), std=pytest.approx(0.1), n=3)
    assert stat_of([0.5]) == Stat(0.5, None, 1)
    assert stat_of([]) is None
    assert cell.text() == "0.200 ± 0.100 (n=3)"


def test_delta_verdicts_follow_the_interval():
    # Same seeds: paired. Differences 0.10, 0.11, 0.09 -> mean 0.10, sd 0.01, se 0.005774,
    # half-width t_{0.975,2} 4.3027 * 0.005774 = 0.02484: [0.0752, 0.1248] excludes 0 -> better.
    win = compare("c", "", "frozen", "AP", by_seed(0.50, 0.52, 0.48), by_seed(0.40, 0.41, 0.39))
    assert win.value == pytest.approx(0.10) and win.verdict == "better" and win.diff.paired
    assert win.diff.ci_low == pytest.approx(0.0752, abs=1e-4)
    assert win.diff.ci_high == pytest.approx(0.1248, abs=1e-4)
    # The old tie threshold stays as information: sqrt(0.02² + 0.01²) = 0.02236.
    assert win.spread == pytest.approx(0.02236, abs=1e-5)
    lose = compare("c", "", "frozen", "AP", by_seed(0.40, 0.41, 0.39), by_seed(0.50, 0.52, 0.48))
    assert lose.verdict == "worse"
    # The docs' worked example: +0.020 [-0.005, +0.045] -> tie.
    tie = compare("c", "", "frozen", "AP", by_seed(0.31, 0.35, 0.33), by_seed(0.30, 0.32, 0.31))
    assert tie.verdict == "tie"
    assert tie.resolution() == "resolves ±0.025; ~4 seeds per side would resolve +0.020"
    assert compare("c", "", "frozen", "AP", by_seed(0.5), by_seed(0.4, 0.41)).verdict == "one seed"


def test_pairing_turns_an_old_spread_tie_into_a_verdict():
    # Frozen is 0.010 below fine-tuned on every seed, but seeds differ by 0.05 among themselves: the old rule
    # (|Δ| 0.010 <= spread sqrt(0.05² + 0.05²) = 0.071) said tie; the per-seed differences are -0.010 each
    # (sd ~0), so the paired interval is [-0.010, -0.010]: worse.
    d = compare("c", "", "frozen", "AP", by_seed(0.40, 0.45, 0.35), by_seed(0.41, 0.46, 0.36))
    assert d.spread == pytest.approx(0.0707, abs=1e-4) and abs(d.value) < d.spread
    assert d.verdict == "worse"


def rows_where_frozen(ap_frozen: list[float], ap_tuned: list[float], capacity="A") -> list[ReportRow]:
    return [row(capacity, "frozen", s, v) for s, v in enumerate(ap_frozen)] + [
        row(capacity, "finetune", s, v) for s, v in enumerate(ap_tuned)
    ]


def test_finding_follows_the_numbers():
    # Differences 0.20, 0.21, 0.19 (paired): mean 0.20, sd 0.01, half-width 0.0248 -> [+0.175, +0.225].
    wins = build_report("s", rows_where_frozen([0.50, 0.52, 0.48], [0.30, 0.31, 0.29]))
    assert "frozen beats fine-tuned by 0.200 (Δ +0.200 [+0.175, +0.225], paired over 3 seeds)" in wins.finding
    assert "AP 0.500 ± 0.020 (n=3) vs fine-tuned 0.300 ± 0.010 (n=3)" in wins.finding
    loses = build_report("s", rows_where_frozen([0.30, 0.31, 0.29], [0.50, 0.52, 0.48]))
    assert (
        "frozen trails fine-tuned by 0.200 (Δ -0.200 [-0.225, -0.175], paired over 3 seeds)" in loses.finding
    )
    ties = build_report("s", rows_where_frozen([0.31, 0.35, 0.33], [0.30, 0.32, 0.31]))
    assert (
        "a tie (Δ +0.020 [-0.005, +0.045], paired over 3 seeds; resolves ±0.025; "
        "~4 seeds per side would resolve +0.020)"
    ) in ties.finding
    assert "beats" not in ties.finding and "trails" not in ties.finding
    assert "step time frozen/fine-tuned 0.50 (n=3/3)" in wins.finding
    assert "peak memory frozen/fine-tuned 0.80 (n=3/3)" in wins.finding
    # AP and AP_r judged at one capacity: 2 comparisons, 0.05 * 2 = 0.1 expected to cross by chance.
    assert (
        "The tables make 2 comparisons at 95% each, uncorrected: about 0.1 would cross by chance"
        in wins.finding
    )


def test_welch_when_the_seeds_differ():
    # Frozen seeds 0-2, fine-tuned seeds 3-5, sd 0.02 each: se 0.01633, df 4, t 2.7764, half-width 0.04534.
    rows = [row("A", "frozen", s, v) for s, v in zip((0, 1, 2), (0.50, 0.52, 0.54))]
    rows += [row("A", "finetune", s, v) for s, v in zip((3, 4, 5), (0.40, 0.42, 0.44))]
    report = build_report("s", rows)
    delta = next(d for d in report.to_json()["deltas"] if d["metric"] == "AP")
    assert delta["paired"] is False and delta["n_pairs"] == 0
    assert delta["ci_low"] == pytest.approx(0.05466, abs=1e-5) and delta["verdict"] == "better"
    assert "(Δ +0.100 [+0.055, +0.145], Welch, n=3/3)" in report.finding


def test_the_sweeps_metric_leads_and_the_others_are_secondary():
    rows = rows_where_frozen([0.50, 0.52, 0.48], [0.30, 0.31, 0.29])
    for r in rows:
        r.metrics["AP50"] = r.metrics["AP"] + 0.1
    report = build_report("s", rows, sweep_metric="AP50")
    assert report.leads == ("AP50", "AP_r")
    assert report.finding.startswith("Lead metrics: AP50 (the sweep's metric) and AP_r.")
    assert "AP50 0.600 ± 0.020 (n=3)" in report.finding and "AP 0.500" not in report.finding
    assert "Secondary metrics (AP), every mode and capacity: 1 better" in report.finding
    # A sweep ranked on loss: not a detection score to compare, AP leads.
    assert build_report("s", rows, sweep_metric="loss").leads == ("AP", "AP_r")


def test_pairs_by_capacity_and_trend_with_capacity():
    rows = rows_where_frozen([0.30, 0.31], [0.50, 0.52], "light") + rows_where_frozen(
        [0.60, 0.62], [0.40, 0.41], "heavy"
    )
    for r in rows:  # same frozen share (0.3): the head parameters order them
        r.metrics["head_params"] = 10.0 if r.capacity == "light" else 99.0
    report = build_report("s", rows)
    assert report.capacities == ["light", "heavy"]
    ap = {d.capacity: d for d in report.deltas if d.metric == "AP"}
    # light: differences -0.20, -0.21: mean -0.205, sd 0.007071, se 0.005, t_{0.975,1} = 12.706,
    # half-width 0.06353 -> [-0.2685, -0.1415] -> worse; heavy: +0.20, +0.21 -> [+0.1415, +0.2685] -> better.
    assert ap["light"].value == pytest.approx(-0.205) and ap["light"].verdict == "worse"
    assert ap["light"].diff.ci_low == pytest.approx(-0.26853, abs=1e-5)
    assert ap["heavy"].value == pytest.approx(0.205) and ap["heavy"].verdict == "better"
    assert ap["heavy"].n == ap["heavy"].n_baseline == 2
    # Trend: two cells of se 0.005 -> slope 0.41 per step, se sqrt(1/(2 * 40000 * 0.25)) = 0.007071,
    # half-width 1.96 * 0.007071 = 0.01386 -> [0.3961, 0.4239] > 0: grows.
    trend = next(t for t in report.to_json()["trends"] if t["metric"] == "AP")
    assert trend["freeze"] == "frozen" and trend["verdict"] == "grows"
    assert trend["slope"] == pytest.approx(0.41)
    assert trend["ci_low"] == pytest.approx(0.3961, abs=1e-4)
    assert trend["ci_high"] == pytest.approx(0.4239, abs=1e-4)
    assert (trend["from_delta"], trend["to_delta"]) == (pytest.approx(-0.205), pytest.approx(0.205))
    assert (
        "Capacity trend of frozen − fine-tuned AP, lightest to heaviest capacity: frozen moves from behind "
        "(-0.205) to ahead (+0.205); slope +0.410 per capacity step [+0.396, +0.424]: frozen gains on "
        "fine-tuned as capacity rises."
    ) in report.finding
    assert "Capacity trend of frozen − fine-tuned AP_r" in report.finding


def test_capacities_follow_the_frozen_share_not_the_head_parameters():
    rows = rows_where_frozen([0.3, 0.31], [0.5, 0.5], "wide") + rows_where_frozen(
        [0.3, 0.31], [0.5, 0.5], "deep"
    )
    for r in rows:
        # "deep" has more head parameters, but "wide"'s frozen model trains a larger share of its total.
        r.metrics["head_params"] = 10.0 if r.capacity == "wide" else 99.0
        if r.freeze == "frozen":
            r.metrics["trainable_share"] = 0.4 if r.capacity == "wide" else 0.2
    assert build_report("s", rows).capacities == ["deep", "wide"]


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
    # No scheduler decision known (a stop rule, or no ASHA state): still a sentence, never null.
    assert stopped[0]["decision"] == "stopped at epoch 1 of 4 (no scheduler decision recorded)"
    assert [e["trial_id"] for e in data["errors"]] == ["A-finetune-8"]
    assert data["unfinished"] == ["A-finetune-7"]
    assert "1 trial(s) stopped early" in data["finding"] and "1 trial(s) had not finished" in data["finding"]
    assert {"sweep", "rows", "deltas", "trends", "finding"} <= set(data)
    assert {"ci_low", "ci_high", "paired", "n_pairs"} <= set(data["deltas"][0])


def test_stopped_trials_carry_the_decision_in_words_in_json_and_markdown():
    from service.report.markdown import markdown
    from sweeps.asha_state import Decision

    decision = {
        "trial_id": "A-frozen-9",
        "stratum": "frozen",
        "rung": 1,
        "epoch": 1,
        "metric": "AP",
        "rung_metric": "last",
        "value": 0.01,
        "cutoff": 0.05,
    }
    sentence = Decision(**decision).describe()  # what the report's rows carry (service/report/rows.py)
    assert sentence == "stopped at rung 1 (epoch 1) among frozen: AP 0.010 < cutoff 0.050"
    rows = rows_where_frozen([0.50, 0.52], [0.30, 0.32])
    rows.append(row("A", "frozen", 9, 0.01, fate="stopped", epochs=1))
    rows[-1].stop, rows[-1].decision = decision, sentence
    report = build_report("s", rows)
    stopped = next(r for r in report.to_json()["rows"] if r["stopped"])
    assert stopped["decision"] == sentence and stopped["stop"] == decision  # the dict stays for tools
    text = markdown(report, [])
    assert f"| 1 of 4 | 0.010 | {sentence} |" in text and "'rung'" not in text


def test_markdown_prints_intervals_and_what_a_tie_could_resolve():
    from service.report.markdown import markdown

    text = markdown(build_report("s", rows_where_frozen([0.31, 0.35, 0.33], [0.30, 0.32, 0.31])), [])
    assert "| +0.020 [-0.005, +0.045] (tie) |" in text  # the headline
    assert (
        "| +0.020 [-0.005, +0.045] (tie; resolves ±0.025; ~4 seeds per side would resolve +0.020) |" in text
    )


def test_the_lead_metric_is_read_from_the_sweeps_spec(tmp_path, caplog):
    import yaml

    from service.report.write import sweep_metric_of
    from service.sweep_folder import SweepFolder

    # The catalog's smoke sweep ranked on AP50 instead of its AP: the report reads the saved spec's choice.
    spec = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "catalog" / "smoke.yaml").read_text())
    spec["scheduler"]["metric"] = "AP50"
    (tmp_path / "frost-sweep.yaml").write_text(yaml.safe_dump(spec))
    assert sweep_metric_of(SweepFolder(tmp_path)) == "AP50"
    (tmp_path / "frost-sweep.yaml").write_text("scheduler: [")  # unreadable: AP leads, with a warning
    assert sweep_metric_of(SweepFolder(tmp_path)) == "AP" and "AP leads the finding" in caplog.text


def test_no_baseline_no_claim():
    report = build_report("s", [row("A", "frozen", 0, 0.5)])
    assert report.deltas == [] and "nothing to compare" in report.finding


def test_labels_name_what_differs_between_capacities_and_minus_one_is_no_score():
    from service.report.rows import _figures, label_capacities

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


def test_delta_plot_is_written_and_named_in_the_report(tmp_path):
    from service.report.markdown import markdown
    from service.report.plots import delta_vs_capacity, plot_report

    rows = rows_where_frozen([0.30, 0.31], [0.50, 0.52], "light") + rows_where_frozen([0.6], [0.4], "heavy")
    report = build_report("s", rows)  # "heavy" has one seed: a point without an interval
    names = [p.name for p in plot_report(report, {}, tmp_path)]
    assert "delta_vs_capacity.png" in names and (tmp_path / "delta_vs_capacity.png").stat().st_size > 0
    assert "![delta_vs_capacity.png](delta_vs_capacity.png)" in markdown(report, names)
    alone = build_report("s", [row("A", "frozen", 0, 0.5)])  # nothing compared: no delta figure
    assert delta_vs_capacity(alone, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
