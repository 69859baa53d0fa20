"""The report's statistics, pure (no MLflow, no Ray): a difference of seed means with its 95% interval, the
verdict it supports, what a tie could have resolved, and the trend of the differences across capacities.

Rules (docs/report.md, "Statistics"):
- `difference`: both sides ran exactly the same seeds (at least 2) -> the paired difference (the mean of the
  per-seed differences, a t-interval with n-1 degrees of freedom: a seed's data order and initialisation are
  shared by both modes, so pairing removes that part of the noise); otherwise Welch's interval (unequal
  variances, Welch-Satterthwaite degrees of freedom). Fewer than 2 seeds on either side: no interval.
- verdict: `better` / `worse` when the 95% interval excludes 0, `tie` when it covers 0, `one seed` without one.
- a tie reports the interval's half-width (the smallest difference this sweep could have resolved) and the
  seeds that would resolve the observed difference at the same spread.
- `trend`: the slope of the differences against capacity rank by weighted least squares, weights 1/se², the
  se of each cell taken as known, so the slope's 95% interval is normal (z = 1.96). With 2-4 capacities a
  residual-based (t) interval would have 0-2 degrees of freedom and say nothing; carrying each cell's own
  uncertainty is what the seeds measured.

scipy is imported inside the functions that need it, so that `frost --help` does not pay for it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

BETTER, WORSE, TIE, ONE_SEED = "better", "worse", "tie", "one seed"
GROWS, SHRINKS, FLAT, UNJUDGED = "grows", "shrinks", "flat", "unjudged"
LEVEL = 0.95
MAX_SEEDS = 1000  # seeds_needed searches no further
_ZERO_SE = 1e-12  # a cell whose seeds agree exactly: known, but a finite weight


def t_quantile(df: float) -> float:
    """t_{0.975, df}: the two-sided 95% quantile of Student's t."""
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df))


def z_quantile() -> float:
    """z_{0.975} = 1.95996...: the two-sided 95% normal quantile."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + LEVEL / 2))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite: (va/na + vb/nb)² / ((va/na)²/(na-1) + (vb/nb)²/(nb-1))."""
    qa, qb = var_a / n_a, var_b / n_b
    denominator = qa**2 / (n_a - 1) + qb**2 / (n_b - 1)
    # Both spreads zero: no variance to weigh; the pooled count is the natural limit.
    return (qa + qb) ** 2 / denominator if denominator > 0 else float(n_a + n_b - 2)


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b), with its 95% interval (None below 2 seeds on either side)."""

    value: float
    ci_low: float | None
    ci_high: float | None
    paired: bool
    n_pairs: int  # 0 when unpaired
    n_a: int
    n_b: int
    se: float | None
    df: float | None
    sd_a: float | None = None  # the sides' sample standard deviations (for seeds_needed)
    sd_b: float | None = None
    sd_diff: float | None = None  # of the per-seed differences, when paired

    @property
    def verdict(self) -> str:
        if self.ci_low is None or self.ci_high is None:
            return ONE_SEED
        if self.ci_low > 0:
            return BETTER
        if self.ci_high < 0:
            return WORSE
        return TIE

    @property
    def half_width(self) -> float | None:
        """The smallest difference this sweep could have told from 0 (at the same spread)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    def seeds_needed(self, cap: int = MAX_SEEDS) -> int | None:
        """Roughly how many seeds (per side) would resolve the observed difference at the same spread (the
        report shows it for ties): the smallest n with t_{0.975,df(n)}·se(n) < |value|; None when no n up to `cap` does (value 0)."""
        if self.verdict == ONE_SEED or self.value == 0:
            return None
        for n in range(2, cap + 1):
            if self.paired:
                assert self.sd_diff is not None
                se, df = self.sd_diff / math.sqrt(n), float(n - 1)
            else:
                assert self.sd_a is not None and self.sd_b is not None
                va, vb = self.sd_a**2, self.sd_b**2
                se, df = math.sqrt((va + vb) / n), welch_df(va, n, vb, n)
            if t_quantile(df) * se < abs(self.value):
                return n
        return None


def difference(a_by_seed: dict[str, float], b_by_seed: dict[str, float]) -> Difference:
    """a − b of the seed means: paired over identical seed sets (>= 2), Welch otherwise."""
    a, b = list(a_by_seed.values()), list(b_by_seed.values())
    if not a or not b:
        raise ValueError("difference: each side needs at least one value")
    value = statistics.fmean(a) - statistics.fmean(b)
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return Difference(value, None, None, False, 0, n_a, n_b, None, None)
    sd_a, sd_b = statistics.stdev(a), statistics.stdev(b)
    if set(a_by_seed) == set(b_by_seed):
        diffs = [a_by_seed[s] - b_by_seed[s] for s in a_by_seed]
        sd_diff = statistics.stdev(diffs)
        se, df = sd_diff / math.sqrt(n_a), float(n_a - 1)
        paired, n_pairs = True, n_a
    else:
        sd_diff = None
        se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)
        df = welch_df(sd_a**2, n_a, sd_b**2, n_b)
        paired, n_pairs = False, 0
    half = t_quantile(df) * se
    return Difference(
        value, value - half, value + half, paired, n_pairs, n_a, n_b, se, df, sd_a, sd_b, sd_diff
    )


@dataclass(frozen=True)
class Trend:
    """The slope of Δ per capacity step (rank 0, 1, 2, ... lightest first) and its 95% interval."""

    slope: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str  # grows, shrinks, flat, unjudged
    from_delta: float | None  # the lightest capacity's Δ
    to_delta: float | None  # the heaviest's
    cells: int = 0  # capacities given


def trend(cells: list[tuple[float, float | None]]) -> Trend:
    """`cells`: (Δ, se of Δ) per capacity in capacity order, lightest first. Weighted least squares of Δ on
    the rank with weights 1/se² (cells without an se are left out of the fit, not of from/to); the slope's
    variance is 1/Σw(x−x̄)² with the se's taken as known, hence a normal interval."""
    start, end = (cells[0][0], cells[-1][0]) if cells else (None, None)
    fitted = [(float(x), y, max(se, _ZERO_SE)) for x, (y, se) in enumerate(cells) if se is not None]
    if len(fitted) < 2:
        return Trend(None, None, None, UNJUDGED, start, end, cells=len(cells))
    weights = [1 / se**2 for _, _, se in fitted]
    total = sum(weights)
    x_bar = sum(w * x for w, (x, _, _) in zip(weights, fitted)) / total
    y_bar = sum(w * y for w, (_, y, _) in zip(weights, fitted)) / total
    sxx = sum(w * (x - x_bar) ** 2 for w, (x, _, _) in zip(weights, fitted))
    slope = sum(w * (x - x_bar) * (y - y_bar) for w, (x, y, _) in zip(weights, fitted)) / sxx
    half = z_quantile() * math.sqrt(1 / sxx)
    low, high = slope - half, slope + half
    verdict = GROWS if low > 0 else SHRINKS if high < 0 else FLAT
    return Trend(slope, low, high, verdict, start, end, cells=len(cells))


# Where a mode stands against fine-tuned at one capacity, from the difference's verdict.
_POSITION = {WORSE: "behind", TIE: "level", BETTER: "ahead"}


def _ends(mode: str, start: float, end: float, start_verdict: str, end_verdict: str) -> str:
    """The words for Δ going from `start` (lightest capacity) to `end` (heaviest)."""
    a, b = _POSITION.get(start_verdict), _POSITION.get(end_verdict)
    if a and b and a != b:
        return f"{mode} moves from {a} ({start:+.3f}) to {b} ({end:+.3f})"
    if start < 0 < end or end < 0 < start:
        return f"the difference crosses zero, from {start:+.3f} to {end:+.3f}"
    if start == end:
        return f"the difference stays at {start:+.3f}"
    if start <= 0 and end <= 0:  # mode behind fine-tuned at both ends: a gap
        word = "narrows" if abs(end) < abs(start) else "widens"
        return f"the gap {word} from {start:+.3f} to {end:+.3f}"
    word = "grows" if abs(end) > abs(start) else "narrows"
    return f"{mode}'s lead {word} from {start:+.3f} to {end:+.3f}"


_SLOPE_WORDS = {
    GROWS: "{mode} gains on fine-tuned as capacity rises",
    SHRINKS: "{mode} loses ground to fine-tuned as capacity rises",
    FLAT: "no trend beyond chance",
}


def trend_sentence(mode: str, metric: str, result: Trend, start_verdict: str, end_verdict: str) -> str | None:
    """E.g. "frozen − fine-tuned AP, lightest to heaviest capacity: the gap widens from -0.056 to -0.096;
    slope -0.020 per capacity step [-0.030, -0.010]: frozen loses ground to fine-tuned as capacity rises."
    The words follow the numbers: a gap that widens is never said to narrow or shrink. None with one
    capacity."""
    if result.from_delta is None or result.to_delta is None or result.cells < 2:
        return None
    head = f"{mode} − fine-tuned {metric}, lightest to heaviest capacity: " + _ends(
        mode, result.from_delta, result.to_delta, start_verdict, end_verdict
    )
    if result.slope is None or result.ci_low is None or result.ci_high is None:
        return head + "; the slope is not judged (fewer than 2 capacities with 2 seeds on each side)."
    words = _SLOPE_WORDS[result.verdict].format(mode=mode)
    return (
        f"{head}; slope {result.slope:+.3f} per capacity step "
        f"[{result.ci_low:+.3f}, {result.ci_high:+.3f}]: {words}."
    )
