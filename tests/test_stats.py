"""service/report/stats.py against values derived by hand: paired and Welch intervals, verdicts, what a tie could
resolve, the weighted capacity trend, and trend sentences whose words match their numbers."""

from __future__ import annotations

import pytest

from service.report.stats import difference, t_quantile, trend, trend_sentence, welch_df


def seeds(*values: float, first: int = 0) -> dict[str, float]:
    return {str(first + i): v for i, v in enumerate(values)}


def test_t_quantiles_are_the_tables():
    # Student's t table, two-sided 95%: df 2 -> 4.3027, df 4 -> 2.7764.
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)


def test_paired_interval_worked_example_of_docs_report_md():
    # Frozen 0.31, 0.35, 0.33 vs fine-tuned 0.30, 0.32, 0.31 on seeds 0, 1, 2 (docs/report.md, "Worked example").
    # Per-seed differences 0.01, 0.03, 0.02: mean 0.02, sd sqrt(((-0.01)² + 0.01² + 0²) / 2) = 0.01,
    # se = 0.01 / sqrt(3) = 0.005774, t_{0.975,2} = 4.3027, half-width 4.3027 * 0.005774 = 0.02484:
    # interval [-0.00484, +0.04484] covers 0 -> tie.
    d = difference(seeds(0.31, 0.35, 0.33), seeds(0.30, 0.32, 0.31))
    assert d.paired and d.n_pairs == 3 and d.n_a == d.n_b == 3 and d.df == 2
    assert d.value == pytest.approx(0.02)
    assert d.se == pytest.approx(0.005774, abs=1e-6)
    assert d.half_width == pytest.approx(0.02484, abs=1e-5)
    assert (d.ci_low, d.ci_high) == (pytest.approx(-0.00484, abs=1e-5), pytest.approx(0.04484, abs=1e-5))
    assert d.verdict == "tie"
    # Seeds to resolve 0.02 at sd 0.01: smallest n with t_{0.975,n-1} * 0.01 / sqrt(n) < 0.02, i.e.
    # t/sqrt(n) < 2: n=3: 4.3027/1.732 = 2.484 (no); n=4: 3.1824/2 = 1.591 (yes) -> 4.
    assert d.seeds_needed() == 4


def test_paired_interval_that_excludes_zero_is_better_and_its_mirror_worse():
    # Differences 0.04, 0.05, 0.06: mean 0.05, sd 0.01, half-width 0.02484 -> [0.02516, 0.07484] > 0.
    a, b = seeds(0.44, 0.55, 0.36), seeds(0.40, 0.50, 0.30)
    d = difference(a, b)
    assert d.paired and d.ci_low == pytest.approx(0.02516, abs=1e-5) and d.verdict == "better"
    # Already resolved with the 3 seeds run: n=2 would give t_{0.975,1} 12.706 * 0.01/sqrt(2) = 0.0898 > 0.05.
    assert d.seeds_needed() == 3
    assert difference(b, a).verdict == "worse"


def test_welch_interval_equal_spreads():
    # Seeds 0-2 against seeds 3-5: not the same seeds, so Welch. Both sd 0.02, n 3:
    # se = sqrt(0.0004/3 + 0.0004/3) = 0.016330; df = (2 q)² / (2 q² / 2) = 4 with q = 0.0004/3;
    # t_{0.975,4} = 2.7764, half-width 0.045339: [0.05466, 0.14534] -> better.
    d = difference(seeds(0.50, 0.52, 0.54), seeds(0.40, 0.42, 0.44, first=3))
    assert not d.paired and d.n_pairs == 0
    assert d.se == pytest.approx(0.016330, abs=1e-6) and d.df == pytest.approx(4.0)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.05466, abs=1e-5), pytest.approx(0.14534, abs=1e-5))
    assert d.verdict == "better"


def test_welch_interval_unequal_spreads_and_counts():
    # a: 0.50, 0.52, 0.54 (n 3, var 0.0004); b: 0.40, 0.46 (n 2, var 0.0018).
    # qa = 0.0004/3 = 0.00013333, qb = 0.0018/2 = 0.0009; se = sqrt(0.00103333) = 0.032146;
    # df = 0.00103333² / (0.00013333²/2 + 0.0009²/1) = 1.06778e-6 / 8.18889e-7 = 1.3039.
    # t_{0.975,1.3039} = 7.4624 (scipy; no table has fractional df), half-width 0.23988:
    # [-0.14988, +0.32988] covers 0 -> tie.
    d = difference(seeds(0.50, 0.52, 0.54), seeds(0.40, 0.46, first=5))
    assert d.value == pytest.approx(0.09)
    assert d.se == pytest.approx(0.032146, abs=1e-6)
    assert d.df == pytest.approx(1.3039, abs=1e-4)
    assert welch_df(0.0004, 3, 0.0018, 2) == pytest.approx(d.df)
    assert d.half_width == pytest.approx(0.23988, abs=1e-5) and d.verdict == "tie"


def test_seeds_in_common_but_not_all_is_welch():
    # Seeds {0,1,2} vs {0,1}: pairing would drop seed 2; the rule pairs only identical seed sets.
    assert not difference(seeds(0.5, 0.6, 0.7), seeds(0.5, 0.6)).paired


def test_one_seed_has_no_interval():
    d = difference(seeds(0.5), seeds(0.4, 0.41))
    assert d.value == pytest.approx(0.095)
    assert (d.ci_low, d.ci_high, d.se, d.df) == (None, None, None, None)
    assert d.verdict == "one seed" and d.half_width is None and d.seeds_needed() is None


def test_a_zero_difference_needs_no_number_of_seeds():
    d = difference(seeds(0.30, 0.34), seeds(0.34, 0.30))  # paired differences -0.04, +0.04: mean 0
    assert d.verdict == "tie" and d.seeds_needed() is None


def test_trend_is_weighted_by_each_cells_uncertainty():
    # Δ 0.00, 0.03, 0.02 with se 0.01, 0.01, 0.02 -> weights 10000, 10000, 2500 (sum 22500).
    # x̄ = (0 + 10000 + 5000)/22500 = 2/3; ȳ = (0 + 300 + 50)/22500 = 0.015556;
    # Sxx = 10000(4/9) + 10000(1/9) + 2500(16/9) = 10000; Sxy = 166.67 -> slope 1/60 = 0.016667
    # (ordinary least squares would give 0.010). Var = 1/Sxx -> half-width 1.96 * 0.01 = 0.0196:
    # [-0.00293, 0.03627] covers 0 -> flat.
    result = trend([(0.00, 0.01), (0.03, 0.01), (0.02, 0.02)])
    assert result.slope == pytest.approx(1 / 60)
    assert result.ci_low == pytest.approx(1 / 60 - 0.0196, abs=1e-5)
    assert result.ci_high == pytest.approx(1 / 60 + 0.0196, abs=1e-5)
    assert result.verdict == "flat" and (result.from_delta, result.to_delta) == (0.00, 0.02)


def test_trend_unjudged_below_two_cells_with_an_se():
    result = trend([(0.01, None), (0.02, 0.01)])
    assert result.verdict == "unjudged" and result.slope is None
    assert (result.from_delta, result.to_delta) == (0.01, 0.02)
    sentence = trend_sentence("frozen", "AP", result, "one seed", "tie")
    assert sentence is not None and "slope is not judged" in sentence
    assert trend_sentence("frozen", "AP", trend([(0.01, 0.01)]), "tie", "tie") is None  # one capacity


def test_a_widening_gap_is_said_to_widen():
    # Δ -0.056, -0.076, -0.096 (se 0.005 each): slope -0.020, half-width 1.96 * 0.005/sqrt(2) = 0.00693
    # -> [-0.02693, -0.01307] < 0: shrinks (frozen loses ground), and the gap widens.
    result = trend([(-0.056, 0.005), (-0.076, 0.005), (-0.096, 0.005)])
    assert result.slope == pytest.approx(-0.020)
    assert result.ci_high == pytest.approx(-0.01307, abs=1e-5) and result.verdict == "shrinks"
    sentence = trend_sentence("frozen", "AP", result, "worse", "worse")
    assert sentence == (
        "frozen − fine-tuned AP, lightest to heaviest capacity: the gap widens from -0.056 to -0.096; "
        "slope -0.020 per capacity step [-0.027, -0.013]: frozen loses ground to fine-tuned as capacity rises."
    )
    assert "narrow" not in sentence and "shrink" not in sentence


def test_a_narrowing_gap_is_said_to_narrow():
    result = trend([(-0.100, 0.005), (-0.060, 0.005), (-0.020, 0.005)])
    assert result.verdict == "grows"
    sentence = trend_sentence("frozen", "AP_r", result, "worse", "worse")
    assert sentence is not None
    assert "the gap narrows from -0.100 to -0.020" in sentence
    assert "frozen gains on fine-tuned as capacity rises" in sentence and "widen" not in sentence


def test_a_lead_that_grows_or_narrows():
    grows = trend_sentence("frozen", "AP", trend([(0.010, 0.002), (0.040, 0.002)]), "better", "better")
    assert grows is not None and "frozen's lead grows from +0.010 to +0.040" in grows
    # Δ 0.010, 0.012, 0.008 at se 0.02: slope -0.001, half-width 1.96 * 0.02/sqrt(2) = 0.0277 -> flat.
    flat = trend([(0.010, 0.02), (0.012, 0.02), (0.008, 0.02)])
    assert flat.slope == pytest.approx(-0.001) and flat.verdict == "flat"
    narrows = trend_sentence("frozen", "AP", flat, "tie", "tie")
    assert narrows is not None and "frozen's lead narrows from +0.010 to +0.008" in narrows
    assert "no trend beyond chance" in narrows


def test_a_flip_names_where_the_mode_stands_at_each_end():
    # Δ -0.050 then +0.004 at se 0.01: slope 0.054, se sqrt(1/5000) = 0.014142, half-width 0.027719.
    result = trend([(-0.050, 0.01), (0.004, 0.01)])
    assert result.ci_low == pytest.approx(0.054 - 0.027719, abs=1e-5) and result.verdict == "grows"
    level = trend_sentence("frozen", "AP", result, "worse", "tie")
    assert level is not None and "frozen moves from behind (-0.050) to level (+0.004)" in level
    ahead = trend_sentence("partial:2", "AP", trend([(-0.05, 0.01), (0.05, 0.01)]), "worse", "better")
    assert ahead is not None and "partial:2 moves from behind (-0.050) to ahead (+0.050)" in ahead
    # Both ends level but of opposite signs: no side is said to lead.
    crosses = trend_sentence("frozen", "AP", trend([(-0.01, 0.02), (0.01, 0.02)]), "tie", "tie")
    assert crosses is not None and "crosses zero, from -0.010 to +0.010" in crosses
